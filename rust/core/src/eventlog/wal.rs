//! The write-ahead file: every durable row (exploration arm, engagements) is appended here on the
//! caller's thread before the call returns, so a kill -9 loses none of them. Segments are
//! append-only; a frame is `len u32 | crc32 u32 | flag u8 | payload` (little-endian, crc over
//! flag + payload). The flag says whether the row also went to the in-memory queue or spilled
//! (queue full; the writer reads it back from here).

use super::fsio::FsIo;
use super::record::Record;
use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"FYPWAL1\n";
pub const FLAG_QUEUED: u8 = 0;
pub const FLAG_SPILLED: u8 = 1;
pub const HEADER: usize = 8;
/// A frame larger than this is corruption, not data (a request row with 1M candidates is ~12 MB).
const MAX_FRAME: usize = 256 << 20;

/// Appends one framed row to `out`.
pub fn frame(out: &mut Vec<u8>, flag: u8, rec: &Record) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(flag);
    rec.encode(out);
    let body = &out[start + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn segment_name(session: u64, no: u64) -> String {
    format!("wal-{session:016x}-{no:06}.log")
}

/// A segment the writer has moved past: its complete frames end at `end` (anything after it is
/// the torn remains of a failed append that could not be cut off).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub no: u64,
    pub path: PathBuf,
    pub end: u64,
}

/// The segment being appended to. Callers hold it behind a mutex.
pub struct WalWriter {
    dir: PathBuf,
    session: u64,
    file: File,
    no: u64,
    /// Offset just past the last complete frame; the file never holds more, except after a
    /// failed append whose truncation also failed (`broken`).
    bytes: u64,
    sync: bool,
    io: FsIo,
    /// The file ends in a torn frame that could not be truncated: nothing more may be
    /// appended to it; the writer thread seals it and starts a new segment.
    broken: bool,
    /// The number the next segment is created with (a failed create that leaves its file
    /// behind skips a number instead of failing with EEXIST forever).
    next_no: u64,
    /// Segments moved past and not yet deleted, oldest first.
    sealed: Vec<Sealed>,
}

impl WalWriter {
    pub fn create(dir: &Path, session: u64, no: u64, sync: bool, io: &FsIo) -> Result<WalWriter> {
        let path = dir.join(segment_name(session, no));
        let fail = |e: &dyn std::fmt::Display| {
            Error::Io(format!(
                "cannot create write-ahead file {}: {e}",
                path.display()
            ))
        };
        let mut file = io.create_append(&path).map_err(|e| fail(&e))?;
        let header = io.write_all(&mut file, &path, MAGIC).and_then(|()| {
            if sync {
                io.sync_all(&file, &path)?;
                io.sync_dir(dir)?;
            }
            Ok(())
        });
        if let Err(e) = header {
            // leave no half-made segment behind; if even that fails the caller skips the number
            drop(file);
            return Err(match io.remove(&path) {
                Ok(()) => fail(&e),
                Err(r) => fail(&format!("{e} (and removing it failed: {r})")),
            });
        }
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            session,
            file,
            no,
            bytes: HEADER as u64,
            sync,
            io: io.clone(),
            broken: false,
            next_no: no + 1,
            sealed: Vec::new(),
        })
    }

    /// Appends whole frames. On failure nothing of `buf` stays in the file: the file is cut
    /// back to the last complete frame, or (the cut failed too) the writer is marked broken and
    /// refuses appends until the writer thread starts a new segment.
    pub fn append(&mut self, buf: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::Io(format!(
                "write-ahead file {} ends in a torn frame; waiting for a new segment",
                self.path().display()
            )));
        }
        let path = self.path();
        let res = self
            .io
            .write_all(&mut self.file, &path, buf)
            .and_then(|()| {
                if self.sync {
                    self.io.sync_data(&self.file, &path)?;
                }
                Ok(())
            });
        match res {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let cut = self.io.set_len(&self.file, &path, self.bytes);
                if let Err(c) = &cut {
                    self.broken = true;
                    return Err(Error::Io(format!(
                        "write-ahead append to {} failed: {e}; cutting the torn frame failed: {c}",
                        path.display()
                    )));
                }
                Err(Error::Io(format!(
                    "write-ahead append to {} failed: {e}",
                    path.display()
                )))
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.session, self.no))
    }

    pub fn no(&self) -> u64 {
        self.no
    }

    /// Bytes of complete frames in the current segment, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when nothing but the header has been written.
    pub fn is_empty(&self) -> bool {
        self.bytes == HEADER as u64
    }

    /// True when the current segment must be replaced before anything more is appended.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Segments moved past and not yet deleted, oldest first.
    pub fn sealed(&self) -> &[Sealed] {
        &self.sealed
    }

    /// Forgets the sealed segments numbered below `no` and returns them (to be deleted).
    pub fn take_sealed_below(&mut self, no: u64) -> Vec<Sealed> {
        let (done, keep) = std::mem::take(&mut self.sealed)
            .into_iter()
            .partition(|s| s.no < no);
        self.sealed = keep;
        done
    }

    /// Seals the current segment and starts the next.
    #[cfg(test)]
    pub fn rotate(&mut self) -> Result<()> {
        let no = self.next_no;
        match self.prepare(no) {
            Ok(next) => {
                self.switch_to(next);
                Ok(())
            }
            Err(e) => {
                self.create_failed(no);
                Err(e)
            }
        }
    }

    /// The number and settings the next segment is created with, so the writer thread can
    /// create it outside the lock callers append under.
    pub fn next_params(&self) -> (PathBuf, u64, u64, bool, FsIo) {
        (
            self.dir.clone(),
            self.session,
            self.next_no,
            self.sync,
            self.io.clone(),
        )
    }

    #[cfg(test)]
    fn prepare(&self, no: u64) -> Result<WalWriter> {
        WalWriter::create(&self.dir, self.session, no, self.sync, &self.io)
    }

    /// After a failed create of segment `no`: if its file was left behind (its removal failed
    /// too), skip the number and remember the file so the next checkpoint deletes it.
    pub fn create_failed(&mut self, no: u64) {
        let path = self.dir.join(segment_name(self.session, no));
        if no == self.next_no && path.exists() {
            self.next_no = no + 1;
            self.sealed.push(Sealed { no, path, end: 0 });
        }
    }

    /// Makes `next` current and seals this one. `next` must have been created with the
    /// number from [`WalWriter::next_params`].
    pub fn switch_to(&mut self, mut next: WalWriter) {
        let sealed = Sealed {
            no: self.no,
            path: self.path(),
            end: self.bytes,
        };
        next.sealed = std::mem::take(&mut self.sealed);
        next.sealed.push(sealed);
        *self = next;
    }

    pub fn io(&self) -> &FsIo {
        &self.io
    }
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub rows: Vec<(u8, Record)>,
    /// Offset just past the last complete frame.
    pub end: u64,
    /// Bytes after `end` that do not form a complete frame (a write cut by a crash) or fail
    /// their checksum; `None` when the segment ends cleanly.
    pub bad_tail: Option<String>,
    /// Bytes skipped between valid frames ([`recover_segment`] only).
    pub skipped: u64,
}

/// Decodes the frame at `buf[at..]`: `(flag, record, frame length)`, or why it is not one.
fn parse_frame(buf: &[u8], at: usize) -> std::result::Result<(u8, Record, usize), String> {
    let rest = &buf[at..];
    if rest.len() < 8 {
        return Err(format!("{} trailing bytes (torn frame header)", rest.len()));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(format!("frame length {len} is impossible"));
    }
    if rest.len() - 8 < len {
        return Err(format!("torn frame: {} of {len} bytes", rest.len() - 8));
    }
    let body = &rest[8..8 + len];
    if crc32fast::hash(body) != crc {
        return Err("frame checksum mismatch".into());
    }
    let rec = Record::decode(&body[1..]).map_err(|e| e.to_string())?;
    Ok((body[0], rec, 8 + len))
}

/// Opens a segment; `Ok(None)` when its header is missing or short (a crash between create
/// and the header write), `Err(Corrupt)` when it is not a write-ahead file.
fn open_checked(io: &FsIo, path: &Path) -> Result<(File, Option<String>)> {
    let mut f = io.open(path).map_err(|e| {
        Error::Io(format!(
            "cannot open write-ahead file {}: {e}",
            path.display()
        ))
    })?;
    let mut magic = [0u8; HEADER];
    let got = f.read(&mut magic)?;
    if got < HEADER {
        return Ok((f, Some(format!("truncated header ({got} bytes)"))));
    }
    if &magic != MAGIC {
        return Err(Error::Corrupt(format!(
            "{} is not a fyp_core write-ahead file (bad magic)",
            path.display()
        )));
    }
    Ok((f, None))
}

/// Reads the complete frames in `[from, to)` of a segment (`to = None`: to the end of the file).
/// `from = 0` checks the header. A torn or corrupt frame stops the read (its offset is `end`).
pub fn read_segment(io: &FsIo, path: &Path, from: u64, to: Option<u64>) -> Result<ReadOutcome> {
    let mut start = from;
    let mut f = if from == 0 {
        let (f, short) = open_checked(io, path)?;
        if let Some(s) = short {
            let empty = s.starts_with("truncated header (0 ");
            return Ok(ReadOutcome {
                bad_tail: (!empty).then_some(s),
                ..ReadOutcome::default()
            });
        }
        start = HEADER as u64;
        f
    } else {
        io.open(path).map_err(|e| {
            Error::Io(format!(
                "cannot open write-ahead file {}: {e}",
                path.display()
            ))
        })?
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    match to {
        Some(to) if to >= start => {
            f.take(to - start).read_to_end(&mut buf)?;
        }
        Some(_) => {}
        None => {
            f.read_to_end(&mut buf)?;
        }
    }
    let mut out = ReadOutcome {
        end: start,
        ..ReadOutcome::default()
    };
    let mut at = 0usize;
    while at < buf.len() {
        match parse_frame(&buf, at) {
            Ok((flag, rec, n)) => {
                out.rows.push((flag, rec));
                at += n;
                out.end = start + at as u64;
            }
            Err(e) => {
                out.bad_tail = Some(e);
                break;
            }
        }
    }
    Ok(out)
}

/// Reads every valid frame of a previous session's segment: past a torn or corrupt frame it
/// scans forward to the next frame whose length, checksum and record all check out (a torn
/// tail followed by later frames, as a writer before the cut-back-on-failure rule left them).
/// A false resync needs a 32-bit checksum collision *and* a decodable record.
pub fn recover_segment(io: &FsIo, path: &Path) -> Result<ReadOutcome> {
    let (mut f, short) = open_checked(io, path)?;
    if let Some(s) = short {
        let empty = s.starts_with("truncated header (0 ");
        return Ok(ReadOutcome {
            bad_tail: (!empty).then_some(s),
            ..ReadOutcome::default()
        });
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let mut out = ReadOutcome {
        end: HEADER as u64,
        ..ReadOutcome::default()
    };
    let mut at = 0usize;
    let mut gap_from: Option<usize> = None;
    while at < buf.len() {
        match parse_frame(&buf, at) {
            Ok((flag, rec, n)) => {
                if let Some(g) = gap_from.take() {
                    out.skipped += (at - g) as u64;
                }
                out.rows.push((flag, rec));
                at += n;
                out.end = (HEADER + at) as u64;
            }
            Err(e) => {
                if gap_from.is_none() {
                    gap_from = Some(at);
                    out.bad_tail = Some(e);
                }
                at += 1;
            }
        }
    }
    if gap_from.is_none() && out.skipped > 0 {
        // the damage was in the middle; the segment itself ends cleanly
        out.bad_tail = out
            .bad_tail
            .map(|e| format!("skipped a damaged region ({e})"));
    }
    Ok(out)
}

/// Segments in `dir`, in name order.
pub fn list_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("wal-") && name.ends_with(".log") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Takes the exclusive lock of a write-ahead directory (released by the OS when the process
/// dies, so a crashed writer never blocks its restart).
pub fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::InvalidArgument(format!(
            "write-ahead directory {} is in use by another open EventLog; give each process its own wal_path (or writer_id)",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(Error::Io(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

pub fn remove_segment(io: &FsIo, path: &Path) -> Result<()> {
    match io.remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(format!("cannot remove {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {

    /// Removes a test directory; only "it was not there" is expected and passed over.
    fn clear(d: &std::path::Path) {
        if let Err(e) = fs::remove_dir_all(d) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::NotFound,
                "{}: {e}",
                d.display()
            );
        }
    }
    use super::*;
    use crate::eventlog::record::tests::samples;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fyp-wal-{name}-{}", std::process::id()));
        clear(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn frames_round_trip_and_torn_tail_is_cut() {
        let d = tmpdir("rt");
        let mut w = WalWriter::create(&d, 1, 0, false, &FsIo::default()).unwrap();
        let rows = samples();
        let mut buf = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            frame(&mut buf, (i % 2) as u8, r);
        }
        w.append(&buf).unwrap();
        let out = read_segment(&FsIo::default(), &w.path(), 0, None).unwrap();
        assert!(out.bad_tail.is_none());
        assert_eq!(out.end, w.bytes());
        let got: Vec<Record> = out.rows.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(got, rows);
        assert_eq!(out.rows[1].0, 1);

        // cut the file at every byte of the last frame: all earlier frames survive
        let full = fs::read(w.path()).unwrap();
        let mut last = Vec::new();
        frame(&mut last, 0, rows.last().unwrap());
        let p = d.join("cut.log");
        for cut in (full.len() - last.len())..full.len() {
            fs::write(&p, &full[..cut]).unwrap();
            let o = read_segment(&FsIo::default(), &p, 0, None).unwrap();
            assert_eq!(o.rows.len(), rows.len() - 1, "cut {cut}");
            assert_eq!(o.bad_tail.is_some(), cut > full.len() - last.len());
        }
        // a flipped bit is caught by the checksum
        let mut bad = full.clone();
        bad[HEADER + 12] ^= 0x40;
        fs::write(&p, &bad).unwrap();
        let o = read_segment(&FsIo::default(), &p, 0, None).unwrap();
        assert!(o.rows.is_empty() && o.bad_tail.is_some());
        // reading from an offset sees only later frames
        let mid = read_segment(&FsIo::default(), &w.path(), 0, None)
            .unwrap()
            .rows
            .len();
        assert_eq!(mid, rows.len());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tmpdir("lock");
        let a = lock_dir(&d).unwrap();
        assert!(matches!(lock_dir(&d), Err(Error::InvalidArgument(_))));
        drop(a);
        assert!(lock_dir(&d).is_ok());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rotate_seals_and_lists() {
        let d = tmpdir("rot");
        let mut w = WalWriter::create(&d, 7, 0, true, &FsIo::default()).unwrap();
        assert!(w.is_empty());
        let mut buf = Vec::new();
        frame(&mut buf, 0, &samples()[0]);
        w.append(&buf).unwrap();
        w.rotate().unwrap();
        assert_eq!(w.no(), 1);
        assert_eq!(list_segments(&d).unwrap().len(), 2);
        let sealed = w.take_sealed_below(1);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].end, (HEADER + buf.len()) as u64);
        remove_segment(&FsIo::default(), &sealed[0].path).unwrap();
        assert_eq!(list_segments(&d).unwrap(), vec![w.path()]);
        fs::remove_dir_all(&d).unwrap();
    }
}
