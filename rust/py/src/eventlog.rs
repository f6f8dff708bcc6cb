//! Binding for fyp_core.EventLog (core: fyp_core::eventlog).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
