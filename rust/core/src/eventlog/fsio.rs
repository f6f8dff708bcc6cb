//! The file operations the event log's durability rests on (write-ahead segments, Parquet
//! files) in one place, so tests can make any of them fail the way a full or failing disk does:
//! short writes, ENOSPC, EIO, read-only, fsync, create and rename failures. Outside `cfg(test)`
//! the injection is compiled out and every call is the plain `std::fs` one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The kinds of operation a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Open,
    Create,
    Write,
    Fsync,
    Rename,
    Truncate,
    Remove,
}

/// File operations, optionally with injected faults (tests only). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct FsIo {
    #[cfg(test)]
    faults: Option<std::sync::Arc<faults::Faults>>,
}

impl FsIo {
    /// An `FsIo` whose operations consult `faults` first.
    #[cfg(test)]
    pub fn with_faults(faults: std::sync::Arc<faults::Faults>) -> FsIo {
        FsIo {
            faults: Some(faults),
        }
    }

    /// `Ok(Some(n))`: write only `n` bytes, then fail with ENOSPC.
    #[cfg(test)]
    fn check(&self, op: Op, path: &Path) -> io::Result<Option<usize>> {
        match &self.faults {
            Some(f) => f.hit(op, path),
            None => Ok(None),
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn check(&self, _op: Op, _path: &Path) -> io::Result<Option<usize>> {
        Ok(None)
    }

    /// Opens a file for reading (a write-ahead segment read back).
    pub fn open(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Open, path)?;
        File::open(path)
    }

    /// Creates a new file for appending (a write-ahead segment); fails if it exists.
    pub fn create_append(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Create, path)?;
        OpenOptions::new().create_new(true).append(true).open(path)
    }

    /// Creates (or truncates) a file for writing (a Parquet temporary).
    pub fn create_truncate(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Create, path)?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    pub fn write_all(&self, f: &mut File, path: &Path, buf: &[u8]) -> io::Result<()> {
        if let Some(n) = self.check(Op::Write, path)? {
            f.write_all(&buf[..n.min(buf.len())])?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected short write: no space left on device",
            ));
        }
        f.write_all(buf)
    }

    pub fn sync_data(&self, f: &File, path: &Path) -> io::Result<()> {
        self.check(Op::Fsync, path)?;
        f.sync_data()
    }

    pub fn sync_all(&self, f: &File, path: &Path) -> io::Result<()> {
        self.check(Op::Fsync, path)?;
        f.sync_all()
    }

    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::Fsync, dir)?;
        File::open(dir)?.sync_all()
    }

    pub fn set_len(&self, f: &File, path: &Path, len: u64) -> io::Result<()> {
        self.check(Op::Truncate, path)?;
        f.set_len(len)
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        std::fs::rename(from, to)
    }

    pub fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        std::fs::remove_file(path)
    }
}

/// A file whose writes go through [`FsIo::write_all`] (the Parquet writer's sink).
pub struct IoFile {
    pub file: File,
    pub path: PathBuf,
    pub io: FsIo,
}

impl Write for IoFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_all(&mut self.file, &self.path, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
pub mod faults {
    //! The injection plan: rules matched in order against (operation, path).
    use super::Op;
    use parking_lot::Mutex;
    use std::io;
    use std::path::Path;

    /// What a matching call does instead of its work.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Fault {
        /// No space left on device.
        Enospc,
        /// An I/O error (a failing disk).
        Eio,
        /// A read-only file system.
        ReadOnly,
        /// Writes write this many bytes, then fail with ENOSPC.
        Short(usize),
    }

    #[derive(Clone, Debug)]
    pub struct Rule {
        pub op: Op,
        /// Only paths containing this (e.g. "wal-", ".part-", "_wal"), or with a leading `*`
        /// ending in the rest ("*hour=22": that directory itself); "" matches every path.
        pub path: &'static str,
        /// Matching calls that pass before the rule fires.
        pub after: u64,
        /// How many times it fires (`u64::MAX`: until cleared).
        pub times: u64,
        pub fault: Fault,
    }

    impl Rule {
        pub fn new(op: Op, path: &'static str, fault: Fault) -> Rule {
            Rule {
                op,
                path,
                after: 0,
                times: u64::MAX,
                fault,
            }
        }
        pub fn after(mut self, n: u64) -> Rule {
            self.after = n;
            self
        }
        pub fn times(mut self, n: u64) -> Rule {
            self.times = n;
            self
        }
    }

    #[derive(Debug, Default)]
    pub struct Faults {
        rules: Mutex<Vec<Rule>>,
        fired: Mutex<u64>,
    }

    impl Faults {
        pub fn add(&self, r: Rule) {
            self.rules.lock().push(r);
        }
        /// The disk is healthy again.
        pub fn clear(&self) {
            self.rules.lock().clear();
        }
        /// How many injected failures have fired.
        pub fn fired(&self) -> u64 {
            *self.fired.lock()
        }

        pub(super) fn hit(&self, op: Op, path: &Path) -> io::Result<Option<usize>> {
            let p = path.to_string_lossy();
            let mut rules = self.rules.lock();
            for r in rules.iter_mut() {
                let hit = match r.path.strip_prefix('*') {
                    Some(suffix) => p.ends_with(suffix),
                    None => p.contains(r.path),
                };
                if r.op != op || !hit || r.times == 0 {
                    continue;
                }
                if r.after > 0 {
                    r.after -= 1;
                    continue;
                }
                r.times -= 1;
                *self.fired.lock() += 1;
                return match r.fault {
                    Fault::Short(n) => Ok(Some(n)),
                    Fault::Enospc => Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "injected: no space left on device",
                    )),
                    Fault::Eio => Err(io::Error::other("injected: input/output error")),
                    Fault::ReadOnly => Err(io::Error::new(
                        io::ErrorKind::ReadOnlyFilesystem,
                        "injected: read-only file system",
                    )),
                };
            }
            Ok(None)
        }
    }
}
