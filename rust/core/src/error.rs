//! The one error type of the core. The binding crate maps each variant to one Python exception
//! class, so messages must say what was wrong and what would be right.

use std::fmt;

/// Errors raised by the core. Each variant maps to one Python builtin (see `rust/py/src/errors.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller passed a value that cannot work (shape, range, NaN, config) -> `ValueError`.
    InvalidArgument(String),
    /// An id, key or version that is not present -> `KeyError`.
    NotFound(String),
    /// A file or stream failed -> `OSError`.
    Io(String),
    /// A file that is truncated, corrupted or not ours -> `fyp_core.CorruptFileError` (a `ValueError`).
    Corrupt(String),
    /// A long call stopped because its [`crate::cancel::Cancel`] was set -> `KeyboardInterrupt`
    /// (the binding sets it on Ctrl-C).
    Interrupted(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::Io(m)
            | Error::Corrupt(m)
            | Error::Interrupted(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// `invalid!("k must be > 0, got {k}")` builds an [`Error::InvalidArgument`].
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::Error::InvalidArgument(format!($($arg)*)) };
}
