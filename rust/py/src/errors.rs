//! One mapping from the core's error enum to Python exceptions (builtins, so `except ValueError`
//! keeps working), plus `run_detached`, the one helper that releases the GIL around core work.

use fyp_core::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyError, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    fyp_core,
    CorruptFileError,
    PyValueError,
    "A file is truncated, corrupted, or not a fyp_core file of the expected kind."
);

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidArgument(m) => PyValueError::new_err(m),
        Error::NotFound(m) => PyKeyError::new_err(m),
        Error::Io(m) => PyOSError::new_err(m),
        Error::Corrupt(m) => CorruptFileError::new_err(m),
    }
}

/// Runs `f` with the GIL released and maps its error. Borrow or copy inputs before calling.
pub fn run_detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> fyp_core::Result<T> + Send,
{
    py.detach(f).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CorruptFileError", m.py().get_type::<CorruptFileError>())
}
