//! The write-ahead file: every durable row (exploration arm, engagements) is appended here on the
//! caller's thread before the call returns, so a kill -9 loses none of them. Segments are
//! append-only; a frame is `len u32 | crc32 u32 | flag u8 | payload` (little-endian, crc over
//! flag + payload). The flag says whether the row also went to the in-memory queue or spilled
//! (queue full; the writer reads it back from here).

use super::record::Record;
use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"FYPWAL1\n";
pub const FLAG_QUEUED: u8 = 0;
pub const FLAG_SPILLED: u8 = 1;
const HEADER: usize = 8;
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

/// The segment being appended to. Callers hold it behind a mutex.
pub struct WalWriter {
    dir: PathBuf,
    session: u64,
    file: File,
    no: u64,
    bytes: u64,
    sync: bool,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Io(format!("cannot fsync directory {}: {e}", dir.display())))
}

impl WalWriter {
    pub fn create(dir: &Path, session: u64, no: u64, sync: bool) -> Result<WalWriter> {
        let path = dir.join(segment_name(session, no));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                Error::Io(format!(
                    "cannot create write-ahead file {}: {e}",
                    path.display()
                ))
            })?;
        file.write_all(MAGIC)?;
        if sync {
            file.sync_all()?;
            sync_dir(dir)?;
        }
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            session,
            file,
            no,
            bytes: HEADER as u64,
            sync,
        })
    }

    pub fn append(&mut self, buf: &[u8]) -> Result<()> {
        self.file.write_all(buf)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.session, self.no))
    }

    pub fn no(&self) -> u64 {
        self.no
    }

    /// Bytes in the current segment, header included. Frames below this offset are complete.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when nothing but the header has been written.
    pub fn is_empty(&self) -> bool {
        self.bytes == HEADER as u64
    }

    /// Seals the current segment and starts the next; returns the sealed segment's path.
    #[cfg(test)]
    pub fn rotate(&mut self) -> Result<PathBuf> {
        let next = self.prepare_next()?;
        Ok(self.switch_to(next))
    }

    /// Creates the next segment without touching this one, so the file creation can happen
    /// outside the lock callers append under.
    pub fn prepare_next(&self) -> Result<WalWriter> {
        WalWriter::create(&self.dir, self.session, self.no + 1, self.sync)
    }

    /// Makes `next` (from [`WalWriter::prepare_next`]) current; returns the sealed path.
    pub fn switch_to(&mut self, next: WalWriter) -> PathBuf {
        std::mem::replace(self, next).path()
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
}

/// Reads the complete frames in `[from, to)` of a segment (`to = None`: to the end of the file).
/// `from = 0` checks the header. A torn or corrupt frame stops the read (its offset is `end`).
pub fn read_segment(path: &Path, from: u64, to: Option<u64>) -> Result<ReadOutcome> {
    let mut f = File::open(path).map_err(|e| {
        Error::Io(format!(
            "cannot open write-ahead file {}: {e}",
            path.display()
        ))
    })?;
    let mut start = from;
    if from == 0 {
        let mut magic = [0u8; HEADER];
        let got = f.read(&mut magic)?;
        if got < HEADER {
            // a crash between create and the header write: an empty segment
            return Ok(ReadOutcome {
                rows: vec![],
                end: 0,
                bad_tail: (got > 0).then(|| "truncated header".to_string()),
            });
        }
        if &magic != MAGIC {
            return Err(Error::Corrupt(format!(
                "{} is not a fyp_core write-ahead file (bad magic)",
                path.display()
            )));
        }
        start = HEADER as u64;
    }
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
        rows: Vec::new(),
        end: start,
        bad_tail: None,
    };
    let mut at = 0usize;
    while at < buf.len() {
        if buf.len() - at < 8 {
            out.bad_tail = Some(format!(
                "{} trailing bytes (torn frame header)",
                buf.len() - at
            ));
            break;
        }
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if len == 0 || len > MAX_FRAME {
            out.bad_tail = Some(format!("frame length {len} is impossible"));
            break;
        }
        if buf.len() - at - 8 < len {
            out.bad_tail = Some(format!("torn frame: {} of {len} bytes", buf.len() - at - 8));
            break;
        }
        let body = &buf[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            out.bad_tail = Some("frame checksum mismatch".into());
            break;
        }
        let rec = match Record::decode(&body[1..]) {
            Ok(r) => r,
            Err(e) => {
                out.bad_tail = Some(e.to_string());
                break;
            }
        };
        out.rows.push((body[0], rec));
        at += 8 + len;
        out.end = start + at as u64;
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

pub fn remove_segment(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(format!("cannot remove {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::record::tests::samples;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fyp-wal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn frames_round_trip_and_torn_tail_is_cut() {
        let d = tmpdir("rt");
        let mut w = WalWriter::create(&d, 1, 0, false).unwrap();
        let rows = samples();
        let mut buf = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            frame(&mut buf, (i % 2) as u8, r);
        }
        w.append(&buf).unwrap();
        let out = read_segment(&w.path(), 0, None).unwrap();
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
            let o = read_segment(&p, 0, None).unwrap();
            assert_eq!(o.rows.len(), rows.len() - 1, "cut {cut}");
            assert_eq!(o.bad_tail.is_some(), cut > full.len() - last.len());
        }
        // a flipped bit is caught by the checksum
        let mut bad = full.clone();
        bad[HEADER + 12] ^= 0x40;
        fs::write(&p, &bad).unwrap();
        let o = read_segment(&p, 0, None).unwrap();
        assert!(o.rows.is_empty() && o.bad_tail.is_some());
        // reading from an offset sees only later frames
        let mid = read_segment(&w.path(), 0, None).unwrap().rows.len();
        assert_eq!(mid, rows.len());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tmpdir("lock");
        let a = lock_dir(&d).unwrap();
        assert!(matches!(lock_dir(&d), Err(Error::InvalidArgument(_))));
        drop(a);
        assert!(lock_dir(&d).is_ok());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn rotate_seals_and_lists() {
        let d = tmpdir("rot");
        let mut w = WalWriter::create(&d, 7, 0, true).unwrap();
        assert!(w.is_empty());
        let mut buf = Vec::new();
        frame(&mut buf, 0, &samples()[0]);
        w.append(&buf).unwrap();
        let sealed = w.rotate().unwrap();
        assert_eq!(w.no(), 1);
        assert_eq!(list_segments(&d).unwrap().len(), 2);
        remove_segment(&sealed).unwrap();
        assert_eq!(list_segments(&d).unwrap(), vec![w.path()]);
        let _ = fs::remove_dir_all(&d);
    }
}
