//! Save/load of an HNSW graph: a versioned little-endian format with an xxh3-64 checksum over
//! every byte, written atomically (temp file in the same directory, fsync, rename, fsync of the
//! directory) so a crash never leaves a half-written index under the final name. Tombstones are
//! saved too, so a loaded index answers exactly like the saved one.
//!
//! Layout v2: magic "FYPHNSW\0", u32 version, u32 dim, u8 metric, u8 quantize mode (0 off,
//! 1 sq8, 2 fp16, 3 auto, 4 sq4; older writers left it 0 and older readers skip it), 2 pad
//! bytes, u32 m, u32 ef_construction, u64 seed, u64 slots, u32 entry node (u32::MAX = empty),
//! u32 entry level; then per slot: u64 label, u8 flags, u8 level, dim x f32 vector, and for
//! each level 0..=level a u32 count followed by that many u32 links; then the codes in use: u8
//! (0 none yet, 1 8-bit, 2 fp16, 3 4-bit), for 8- and 4-bit followed by dim x f32 offsets and
//! dim x f32 scales (so a loaded index traverses the codes the saved one did and answers
//! identically); then the u64 checksum of everything before it. Version 1 files (no codes
//! section) are read too: their codes are fitted again on load.

use super::distance::Metric;
use super::graph::{Graph, MAX_M};
use super::quant::{Codec, Quant, Quantize};
use super::store::{read_links, write_links, FLAG_DELETED, FLAG_REPAIRED, MAX_LEVEL};
use crate::Error;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"FYPHNSW\0";
const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 4;

struct HashWriter<W: Write> {
    inner: W,
    h: Xxh3,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.h.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

pub fn save(g: &Graph, path: &Path) -> crate::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| crate::invalid!("save path {} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = write_file(g, &tmp);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path, "cannot rename the temp file to", e)
    })?;
    // Make the rename itself durable (best effort: not every filesystem lets us open a dir).
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_file(g: &Graph, tmp: &Path) -> crate::Result<()> {
    let f = std::fs::File::create(tmp).map_err(|e| io(tmp, "cannot create", e))?;
    let w = BufWriter::with_capacity(1 << 20, f);
    let inner = encode(g, g.slots(), g.entry(), w).map_err(|e| io(tmp, "cannot write", e))?;
    let f = inner
        .into_inner()
        .map_err(|x| io(tmp, "cannot write", x.into_error()))?;
    f.sync_all().map_err(|x| io(tmp, "cannot fsync", x))?;
    Ok(())
}

/// The index file's bytes in memory (a host snapshot copies the graph under a short lock and
/// writes the bytes to disk after releasing it).
pub fn to_bytes(g: &Graph) -> Vec<u8> {
    to_bytes_upto(g, g.slots(), g.entry())
}

/// The file of the graph's first `slots` nodes with entry point `entry`, links to later nodes
/// left out: a cut taken while no insert was under way (every node below `slots` complete)
/// and written while inserts continue (nodes are never moved or rewritten; link lists are
/// read entry by entry, as a search reads them).
pub fn to_bytes_upto(g: &Graph, slots: usize, entry: Option<(u32, usize)>) -> Vec<u8> {
    let guess = slots * (8 + 2 + 4 * g.dim + 4 * (2 * g.m + 2)) + HEADER + 8;
    // writing into a Vec cannot fail
    encode(g, slots, entry, Vec::with_capacity(guess)).unwrap_or_default()
}

/// Writes the whole file format (header, nodes, checksum) into `w`; returns `w`.
fn encode<W: Write>(
    g: &Graph,
    slots: usize,
    entry: Option<(u32, usize)>,
    w: W,
) -> std::io::Result<W> {
    let mut w = HashWriter {
        inner: w,
        h: Xxh3::new(),
    };
    let (en, el) = entry.map_or((u32::MAX, 0), |(n, l)| (n, l as u32));
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(g.dim as u32).to_le_bytes());
    head.extend_from_slice(&[g.metric.code(), g.quantize.code(), 0, 0]);
    head.extend_from_slice(&(g.m as u32).to_le_bytes());
    head.extend_from_slice(&(g.ef_construction as u32).to_le_bytes());
    head.extend_from_slice(&g.seed.to_le_bytes());
    head.extend_from_slice(&(slots as u64).to_le_bytes());
    head.extend_from_slice(&en.to_le_bytes());
    head.extend_from_slice(&el.to_le_bytes());
    w.write_all(&head)?;
    let mut buf = vec![0u32; 2 * MAX_M];
    let mut rec = Vec::new();
    for i in 0..slots as u32 {
        rec.clear();
        let level = g.store.level(i);
        rec.extend_from_slice(&g.store.label(i).to_le_bytes());
        rec.push(g.store.flags(i));
        rec.push(level as u8);
        for x in &g.store.vector(i)[..g.dim] {
            rec.extend_from_slice(&x.to_le_bytes());
        }
        for l in 0..=level {
            let n = read_links(g.store.links(i, l), &mut buf);
            let kept = buf[..n].iter().filter(|&&x| (x as usize) < slots);
            rec.extend_from_slice(&(kept.clone().count() as u32).to_le_bytes());
            for x in kept {
                rec.extend_from_slice(&x.to_le_bytes());
            }
        }
        w.write_all(&rec)?;
    }
    w.write_all(&codes_section(g))?;
    let sum = w.h.digest();
    let mut inner = w.inner;
    inner.write_all(&sum.to_le_bytes())?;
    Ok(inner)
}

/// The codes section: which codes the graph traverses, and the scalar codes' ranges.
fn codes_section(g: &Graph) -> Vec<u8> {
    match g.codec.get() {
        None => vec![0],
        Some(Codec::Fp16) => vec![2],
        Some(Codec::Sq(q)) => {
            let (offset, scale) = q.parts();
            let mut b = vec![if q.bits == 4 { 3 } else { 1 }];
            for x in offset.iter().chain(scale) {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b
        }
    }
}

/// Set the saved codes on the loaded `g` (version 2 files).
fn read_codes(g: &Graph, r: &mut Reader<'_>) -> crate::Result<()> {
    let codec = match r.u8()? {
        0 => return Ok(()),
        2 => Codec::Fp16,
        kind @ (1 | 3) => {
            let mut f = || -> crate::Result<Vec<f32>> {
                (0..g.dim)
                    .map(|_| {
                        Ok(f32::from_le_bytes(
                            r.take(4)?.try_into().unwrap_or_default(),
                        ))
                    })
                    .collect()
            };
            let (offset, scale) = (f()?, f()?);
            let bits = if kind == 3 { 4 } else { 8 };
            Codec::Sq(
                Quant::from_parts(&offset, &scale, g.store.stride, bits)
                    .ok_or_else(|| corrupt("bad scalar code ranges"))?,
            )
        }
        c => return Err(corrupt(format!("unknown codes kind {c}"))),
    };
    let fits = match g.quantize {
        Quantize::Off => false,
        Quantize::Fp16 => matches!(codec, Codec::Fp16),
        Quantize::Sq8 => matches!(&codec, Codec::Sq(q) if q.bits == 8),
        Quantize::Sq4 => matches!(&codec, Codec::Sq(q) if q.bits == 4),
        Quantize::Auto => !matches!(&codec, Codec::Sq(q) if q.bits == 4),
    };
    if !fits {
        return Err(corrupt("codes section does not match the quantize mode"));
    }
    g.set_codec(codec)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> crate::Result<&[u8]> {
        if self.b.len() - self.pos < n {
            return Err(Error::Corrupt("HNSW index file is truncated".into()));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> crate::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> crate::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> crate::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

fn corrupt(m: impl Into<String>) -> Error {
    Error::Corrupt(format!("HNSW index file is corrupt: {}", m.into()))
}

pub fn load(path: &Path) -> crate::Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| io(path, "cannot read", e))?;
    from_bytes(&bytes, &path.display().to_string())
}

/// Parses an index file held in memory; `name` says what it is in error messages.
pub fn from_bytes(bytes: &[u8], name: &str) -> crate::Result<Graph> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(Error::Corrupt(format!(
            "{name} is not a fyp_core HNSW index file (bad magic)"
        )));
    }
    if bytes.len() < HEADER + 8 {
        return Err(Error::Corrupt("HNSW index file is truncated".into()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(1..=VERSION).contains(&version) {
        return Err(Error::Corrupt(format!(
            "HNSW index file has format version {version}; this build reads versions 1 to \
             {VERSION}"
        )));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let want = u64::from_le_bytes(tail.try_into().unwrap_or_default());
    if xxhash_rust::xxh3::xxh3_64(body) != want {
        return Err(Error::Corrupt(
            "HNSW index file checksum mismatch (truncated or corrupted)".into(),
        ));
    }
    let mut r = Reader { b: body, pos: 12 };
    let dim = r.u32()? as usize;
    let metric = Metric::from_code(r.u8()?).ok_or_else(|| corrupt("unknown metric"))?;
    let quantize = Quantize::from_code(r.u8()?).ok_or_else(|| corrupt("unknown quantize mode"))?;
    r.take(2)?;
    if !quantize.supports(metric) {
        return Err(corrupt("4-bit codes with metric l2"));
    }
    let m = r.u32()? as usize;
    let efc = r.u32()? as usize;
    let seed = r.u64()?;
    let slots = r.u64()?;
    let en = r.u32()?;
    let el = r.u32()? as usize;
    if dim == 0 || dim > 65_536 || !(2..=MAX_M).contains(&m) || efc == 0 {
        return Err(corrupt(format!(
            "bad header (dim {dim}, m {m}, ef_construction {efc})"
        )));
    }
    let min_rec = 8 + 2 + 4 * dim + 4;
    if slots > (body.len() / min_rec) as u64 || slots >= u32::MAX as u64 {
        return Err(corrupt(format!(
            "header claims {slots} nodes, more than the file holds"
        )));
    }
    let slots = slots as usize;
    let g = Graph::new(dim, metric, m, efc, slots.max(64), seed, quantize);
    read_nodes(&g, &mut r, slots)?;
    if version >= 2 {
        read_codes(&g, &mut r)?;
    }
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the last node"));
    }
    if en != u32::MAX {
        if en as usize >= slots || el != g.store.level(en) {
            return Err(corrupt("bad entry point"));
        }
        g.set_entry(en, el);
    } else if slots > 0 {
        return Err(corrupt("nodes present but no entry point"));
    }
    Ok(g)
}

/// The node records of an index file: vectors, links (bounded by `slots`), tombstones.
fn read_nodes(g: &Graph, r: &mut Reader<'_>, slots: usize) -> crate::Result<()> {
    let (dim, m) = (g.dim, g.m);
    let mut vec = vec![0f32; dim];
    let mut links = Vec::with_capacity(2 * m);
    for i in 0..slots {
        let label = r.u64()?;
        let flags = r.u8()?;
        let level = r.u8()? as usize;
        if level > MAX_LEVEL {
            return Err(corrupt(format!("node {i} has level {level} > {MAX_LEVEL}")));
        }
        for x in vec.iter_mut() {
            *x = f32::from_le_bytes(r.take(4)?.try_into().unwrap_or_default());
            if !x.is_finite() {
                return Err(corrupt(format!("node {i} has a non-finite vector value")));
            }
        }
        let slot = g.alloc(label, &vec, Some(level))?;
        for l in 0..=level {
            let n = r.u32()? as usize;
            let cap = if l == 0 { 2 * m } else { m };
            if n > cap {
                return Err(corrupt(format!(
                    "node {i} has {n} links on level {l}, max {cap}"
                )));
            }
            links.clear();
            for _ in 0..n {
                let x = r.u32()?;
                if x as usize >= slots {
                    return Err(corrupt(format!("node {i} links to node {x} of {slots}")));
                }
                links.push(x);
            }
            write_links(g.store.links(slot, l), &links);
        }
        if flags & FLAG_DELETED != 0 {
            // Saved under the exclusive gate, so every tombstone's repair had finished.
            g.tombstone(slot);
            g.store.set_flag(slot, FLAG_REPAIRED);
        } else {
            if g.ids.insert(label, slot).is_some() {
                return Err(corrupt(format!("id {label} is live twice")));
            }
            g.live.fetch_add(1, Ordering::AcqRel);
        }
    }
    Ok(())
}
