//! Host snapshot files (issue #16, `docs/scale-out.md`): what a serving host needs to start
//! without rebuilding its index — the HNSW index file, the item table, the batch tier and the
//! catalogue-stream position they include — in one directory per snapshot:
//!
//! ```text
//! <dir>/snap-<created_ms, 13 digits>-<origin>/
//!     index.hnsw   the HNSW file format (ann/persist.rs; its own xxh3 trailer too)
//!     items.bin    the live item table (below)
//!     batch.bin    the batch tier (`BatchTier::encode`)
//!     MANIFEST     text: format, origin, stream position, dims, and per file its size and xxh3
//! ```
//!
//! Written atomically: every file goes into `<dir>/.tmp-snap-...` (each fsynced), the manifest
//! last, then the directory is renamed to its final name and `<dir>` fsynced, so a reader sees a
//! complete snapshot or none. A reader verifies the manifest's own checksum and every file's
//! size and xxh3 before using any byte, and refuses the snapshot otherwise.

use super::store::ItemInfo;
use crate::{invalid, Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "MANIFEST";
pub const INDEX_FILE: &str = "index.hnsw";
pub const ITEMS_FILE: &str = "items.bin";
pub const BATCH_FILE: &str = "batch.bin";
const ITEMS_MAGIC: &[u8; 8] = b"FYPITEMS";
const ITEMS_VERSION: u32 = 1;
/// A `.tmp-snap-*` directory older than this is a crashed writer's leftover (pruned).
const STALE_TMP_S: u64 = 3600;

/// One file of a snapshot as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub xxh3: u64,
}

/// What a snapshot holds and where in the catalogue stream it stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub created_ms: u64,
    /// The pipeline that wrote it (its catalogue-stream name).
    pub origin: String,
    /// The last catalogue-stream id applied, and the stream entries consumed up to it.
    pub position: String,
    pub consumed: u64,
    pub retrieval_version: String,
    pub dim: usize,
    pub items: usize,
    pub files: Vec<FileEntry>,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("snapshot {} is refused: {what}", path.display()))
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

fn one_line(name: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.contains(['\n', '\r']) {
        return Err(invalid!(
            "snapshot {name} must be one non-empty line, got {v:?}"
        ));
    }
    Ok(())
}

impl Manifest {
    /// The manifest text, its last line the xxh3 of everything before it.
    pub fn render(&self) -> Result<String> {
        one_line("origin", &self.origin)?;
        one_line("retrieval version", &self.retrieval_version)?;
        let mut s = format!(
            "fyp-snapshot {FORMAT}\ncreated_ms {}\norigin {}\nposition {}\nconsumed {}\n\
             retrieval_version {}\ndim {}\nitems {}\n",
            self.created_ms,
            self.origin,
            self.position,
            self.consumed,
            self.retrieval_version,
            self.dim,
            self.items
        );
        for f in &self.files {
            s.push_str(&format!("file {} {} {:016x}\n", f.name, f.bytes, f.xxh3));
        }
        let sum = xxh3_64(s.as_bytes());
        s.push_str(&format!("checksum {sum:016x}\n"));
        Ok(s)
    }

    /// Parses and checks a manifest (its checksum line first).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| corrupt(path, "the manifest is truncated"))?;
        let (body, last) = text.split_at(body_end);
        let want = last
            .trim_end()
            .strip_prefix("checksum ")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| corrupt(path, "the manifest has no checksum line (truncated?)"))?;
        if xxh3_64(body.as_bytes()) != want {
            return Err(corrupt(path, "the manifest checksum does not match"));
        }
        let mut m = Manifest::default();
        let mut format = None;
        for line in body.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| corrupt(path, format!("bad manifest line {line:?}")))
            };
            match k {
                "fyp-snapshot" => format = Some(num()?),
                "created_ms" => m.created_ms = num()?,
                "origin" => m.origin = v.to_owned(),
                "position" => m.position = v.to_owned(),
                "consumed" => m.consumed = num()?,
                "retrieval_version" => m.retrieval_version = v.to_owned(),
                "dim" => m.dim = num()? as usize,
                "items" => m.items = num()? as usize,
                "file" => m.files.push(parse_file(v, path)?),
                _ => return Err(corrupt(path, format!("unknown manifest line {line:?}"))),
            }
        }
        if format != Some(u64::from(FORMAT)) {
            return Err(corrupt(
                path,
                format!("format {format:?}; this build reads format {FORMAT}"),
            ));
        }
        Ok(m)
    }
}

fn parse_file(v: &str, path: &Path) -> Result<FileEntry> {
    let mut it = v.split(' ');
    let (name, bytes, sum) = (it.next(), it.next(), it.next());
    let e = FileEntry {
        name: name.unwrap_or_default().to_owned(),
        bytes: bytes.and_then(|b| b.parse().ok()).unwrap_or(u64::MAX),
        xxh3: sum
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or_default(),
    };
    if e.name.is_empty() || e.name.contains('/') || e.bytes == u64::MAX || sum.is_none() {
        return Err(corrupt(path, format!("bad manifest file line {v:?}")));
    }
    Ok(e)
}

/// A snapshot read back, every file verified against the manifest.
pub struct Loaded {
    pub path: PathBuf,
    pub manifest: Manifest,
    files: Vec<(String, Vec<u8>)>,
}

impl Loaded {
    pub fn file(&self, name: &str) -> Result<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| corrupt(&self.path, format!("the manifest lists no {name}")))
    }
}

/// What one write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    /// Older snapshots removed to keep the newest `keep`.
    pub pruned: usize,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| io(path, "cannot create", e))?;
    f.write_all(bytes)
        .map_err(|e| io(path, "cannot write", e))?;
    f.sync_all().map_err(|e| io(path, "cannot fsync", e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "cannot fsync directory", e))
}

/// Writes a snapshot of `files` under `dir` atomically (see the module doc), then removes all
/// but the newest `keep` snapshots. `meta.files` is filled in here.
pub fn write(
    dir: &Path,
    mut meta: Manifest,
    files: &[(&str, &[u8])],
    keep: usize,
) -> Result<Written> {
    if keep == 0 {
        return Err(invalid!(
            "keep must be >= 1 (the newest snapshot is always kept)"
        ));
    }
    fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create snapshot directory", e))?;
    let name = format!("snap-{:013}-{}", meta.created_ms, meta.origin);
    let tmp = dir.join(format!(".tmp-{name}"));
    let fin = dir.join(&name);
    if fin.exists() {
        return Err(invalid!("snapshot {} exists already", fin.display()));
    }
    let r = write_tmp(&tmp, &mut meta, files).and_then(|bytes| {
        fs::rename(&tmp, &fin).map_err(|e| io(&fin, "cannot rename the snapshot to", e))?;
        sync_dir(dir)?;
        Ok(bytes)
    });
    let bytes = match r {
        Ok(b) => b,
        Err(e) => {
            // the partial directory is invisible to readers; a failed cleanup is left for prune
            if let Err(c) = fs::remove_dir_all(&tmp) {
                if c.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Io(format!(
                        "{e}; and cannot remove {}: {c}",
                        tmp.display()
                    )));
                }
            }
            return Err(e);
        }
    };
    let pruned = prune(dir, keep)?;
    Ok(Written {
        path: fin,
        bytes,
        pruned,
    })
}

fn write_tmp(tmp: &Path, meta: &mut Manifest, files: &[(&str, &[u8])]) -> Result<u64> {
    fs::create_dir(tmp).map_err(|e| io(tmp, "cannot create", e))?;
    let mut total = 0;
    for (name, bytes) in files {
        write_synced(&tmp.join(name), bytes)?;
        total += bytes.len() as u64;
        meta.files.push(FileEntry {
            name: (*name).to_owned(),
            bytes: bytes.len() as u64,
            xxh3: xxh3_64(bytes),
        });
    }
    let text = meta.render()?;
    // the manifest last: a directory without one is never a snapshot
    let mt = tmp.join(format!("{MANIFEST}.tmp"));
    write_synced(&mt, text.as_bytes())?;
    fs::rename(&mt, tmp.join(MANIFEST)).map_err(|e| io(&mt, "cannot rename", e))?;
    sync_dir(tmp)?;
    Ok(total + text.len() as u64)
}

/// Complete snapshots under `dir`, newest first (by creation time in the name). A missing
/// directory holds none.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io(dir, "cannot list snapshot directory", e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io(dir, "cannot list snapshot directory", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap-") {
            out.push((name, e.path()));
        }
    }
    out.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Reads the manifest of snapshot `path` (checked), without the data files.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let mp = path.join(MANIFEST);
    let text = fs::read(&mp).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => corrupt(path, "it has no MANIFEST"),
        _ => io(&mp, "cannot read", e),
    })?;
    let text =
        String::from_utf8(text).map_err(|_| corrupt(path, "the manifest is not UTF-8 text"))?;
    Manifest::parse(&text, path)
}

/// The newest snapshot under `dir` whose manifest reads and checks (its data files are
/// verified only by [`read`]), or `None` when there is none.
pub fn newest_manifest(dir: &Path) -> Result<Option<(PathBuf, Manifest)>> {
    Ok(list(dir)?
        .into_iter()
        .find_map(|p| read_manifest(&p).ok().map(|m| (p, m))))
}

/// Reads snapshot `path` and verifies every file's size and xxh3 against its manifest.
pub fn read(path: &Path) -> Result<Loaded> {
    let manifest = read_manifest(path)?;
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let fp = path.join(&f.name);
        let b = fs::read(&fp).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => corrupt(path, format!("{} is missing", f.name)),
            _ => io(&fp, "cannot read", e),
        })?;
        if b.len() as u64 != f.bytes {
            return Err(corrupt(
                path,
                format!(
                    "{} has {} bytes, the manifest says {} (truncated?)",
                    f.name,
                    b.len(),
                    f.bytes
                ),
            ));
        }
        if xxh3_64(&b) != f.xxh3 {
            return Err(corrupt(
                path,
                format!("{} fails its xxh3 checksum (corrupted)", f.name),
            ));
        }
        files.push((f.name.clone(), b));
    }
    Ok(Loaded {
        path: path.to_owned(),
        manifest,
        files,
    })
}

/// Removes all but the newest `keep` snapshots, and leftovers of crashed writers older than an
/// hour; returns how many snapshots were removed.
pub fn prune(dir: &Path, keep: usize) -> Result<usize> {
    let snaps = list(dir)?;
    let mut n = 0;
    for p in snaps.iter().skip(keep) {
        fs::remove_dir_all(p).map_err(|e| io(p, "cannot remove old snapshot", e))?;
        n += 1;
    }
    let rd = fs::read_dir(dir).map_err(|e| io(dir, "cannot list snapshot directory", e))?;
    for e in rd.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > STALE_TMP_S);
        if stale && e.file_name().to_string_lossy().starts_with(".tmp-snap-") {
            let p = e.path();
            fs::remove_dir_all(&p).map_err(|e| io(&p, "cannot remove stale", e))?;
        }
    }
    Ok(n)
}

/// The live item table: magic, u32 version, u32 dim, u64 n, then per item id u64, topic u32,
/// creator u64, category u32, upload_ts f64 and dim f32 (little-endian).
pub fn encode_items(infos: &[ItemInfo], emb: &[f32], dim: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + infos.len() * (32 + 4 * dim));
    b.extend_from_slice(ITEMS_MAGIC);
    b.extend_from_slice(&ITEMS_VERSION.to_le_bytes());
    b.extend_from_slice(&(dim as u32).to_le_bytes());
    b.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    for (i, e) in infos.iter().zip(emb.chunks_exact(dim.max(1))) {
        b.extend_from_slice(&i.id.to_le_bytes());
        b.extend_from_slice(&i.topic.to_le_bytes());
        b.extend_from_slice(&i.creator.to_le_bytes());
        b.extend_from_slice(&i.category.to_le_bytes());
        b.extend_from_slice(&i.upload_ts.to_le_bytes());
        for x in e {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    b
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// Parses an item table written by [`encode_items`].
pub fn decode_items(b: &[u8], dim: usize) -> Result<(Vec<ItemInfo>, Vec<f32>)> {
    let bad = |m: String| Error::Corrupt(format!("snapshot item table: {m}"));
    if b.len() < 24 || &b[..8] != ITEMS_MAGIC {
        return Err(bad("not a fyp_core item table (bad magic)".into()));
    }
    let (ver, d) = (u32::from_le_bytes(le(b, 8)), u32::from_le_bytes(le(b, 12)));
    if ver != ITEMS_VERSION || d as usize != dim {
        return Err(bad(format!(
            "version {ver} dim {d}; expected version {ITEMS_VERSION} dim {dim}"
        )));
    }
    let n = u64::from_le_bytes(le(b, 16)) as usize;
    let rec = 32 + 4 * dim;
    if (b.len() - 24) / rec != n || !(b.len() - 24).is_multiple_of(rec) {
        return Err(bad(format!("{} bytes do not hold {n} items", b.len())));
    }
    let mut infos = Vec::with_capacity(n);
    let mut emb = Vec::with_capacity(n * dim);
    for r in b[24..].chunks_exact(rec) {
        infos.push(ItemInfo {
            id: u64::from_le_bytes(le(r, 0)),
            topic: u32::from_le_bytes(le(r, 8)),
            creator: u64::from_le_bytes(le(r, 12)),
            category: u32::from_le_bytes(le(r, 20)),
            upload_ts: f64::from_le_bytes(le(r, 24)),
        });
        emb.extend(
            r[32..]
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes(le(x, 0))),
        );
    }
    Ok((infos, emb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fyp-snap-{name}-{}", std::process::id()));
        match fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot clean {}: {e}", d.display()),
        }
        d
    }

    fn meta(ms: u64) -> Manifest {
        Manifest {
            created_ms: ms,
            origin: "abc".into(),
            position: "5-0".into(),
            consumed: 5,
            retrieval_version: "content".into(),
            dim: 2,
            items: 1,
            files: vec![],
        }
    }

    #[test]
    fn write_read_prune_and_refuse_corruption() {
        let d = tmpdir("rw");
        for ms in 1..=4 {
            let w = write(&d, meta(ms), &[("a.bin", b"hello"), ("b.bin", b"xy")], 2).unwrap();
            assert_eq!(w.pruned, usize::from(ms > 2));
        }
        let snaps = list(&d).unwrap();
        assert_eq!(snaps.len(), 2);
        let l = read(&snaps[0]).unwrap();
        assert_eq!(l.manifest.created_ms, 4);
        assert_eq!(l.manifest.position, "5-0");
        assert_eq!(l.file("a.bin").unwrap(), b"hello");
        // one flipped byte, a truncated file, a truncated manifest: each refused
        fs::write(snaps[0].join("a.bin"), b"hellp").unwrap();
        let e = read(&snaps[0]).err().unwrap().to_string();
        assert!(e.contains("a.bin fails its xxh3 checksum"), "{e}");
        fs::write(snaps[0].join("a.bin"), b"hell").unwrap();
        assert!(read(&snaps[0])
            .err()
            .unwrap()
            .to_string()
            .contains("truncated"));
        let mp = snaps[1].join(MANIFEST);
        let text = fs::read_to_string(&mp).unwrap();
        fs::write(&mp, &text[..text.len() - 10]).unwrap();
        assert!(read(&snaps[1]).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn items_round_trip() {
        let infos = vec![ItemInfo {
            id: 9,
            topic: 2,
            creator: 7,
            category: 1,
            upload_ts: 3.5,
        }];
        let b = encode_items(&infos, &[1.0, -2.0], 2);
        assert_eq!(decode_items(&b, 2).unwrap(), (infos, vec![1.0, -2.0]));
        assert!(decode_items(&b[..b.len() - 1], 2).is_err());
        assert!(decode_items(&b, 3).is_err());
    }
}
