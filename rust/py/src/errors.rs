//! One mapping from the core's error enum to Python exceptions (builtins, so `except ValueError`
//! keeps working), plus `run_detached`, the one helper that releases the GIL around core work, and
//! `run_interruptible`, its form for long calls that Ctrl-C must be able to stop.

use fyp_core::cancel::Cancel;
use fyp_core::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyError, PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

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
        Error::Interrupted(m) => PyKeyboardInterrupt::new_err(m),
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

/// How often a long call looks for a pending Ctrl-C (the latency of stopping one).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `f` with the GIL released on a worker thread while this thread watches for signals: on
/// Ctrl-C (any pending signal whose handler raises) the [`Cancel`] handed to `f` is set, `f` stops
/// at its next check, and the handler's exception (KeyboardInterrupt) is raised here. Signals are
/// only delivered to Python's main thread; elsewhere this is `run_detached` with one extra thread.
pub fn run_interruptible<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> fyp_core::Result<T> + Send,
{
    let cancel = Cancel::new();
    let mut raised: Option<PyErr> = None;
    let out = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let flag = &cancel;
            let work = s.spawn(move || {
                let r = f(flag);
                // `rx` lives until after the join below, so this send cannot fail
                tx.send(()).ok();
                r
            });
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SIGNAL_POLL) {
                if raised.is_none() {
                    raised = Python::attach(|py| py.check_signals().err());
                    if raised.is_some() {
                        cancel.cancel();
                    }
                }
            }
            work.join()
        })
    });
    match (out, raised) {
        (_, Some(e)) => Err(e),
        (Ok(r), None) => r.map_err(to_py),
        (Err(panic), None) => std::panic::resume_unwind(panic),
    }
}

/// `_wait_interruptible(seconds)`: waits up to `seconds` the way a long call works (GIL released,
/// checking its Cancel every millisecond); Ctrl-C raises KeyboardInterrupt at once. The test of
/// `run_interruptible` itself (tests/test_interrupt.py).
#[pyfunction]
fn _wait_interruptible(py: Python<'_>, seconds: f64) -> PyResult<()> {
    if !(seconds.is_finite() && (0.0..=3600.0).contains(&seconds)) {
        return Err(PyValueError::new_err(format!(
            "seconds must be in [0, 3600], got {seconds}"
        )));
    }
    let until = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    run_interruptible(py, |cancel| {
        while std::time::Instant::now() < until {
            cancel.check("the wait")?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_wait_interruptible, m)?)?;
    m.add("CorruptFileError", m.py().get_type::<CorruptFileError>())
}
