//! Binding for fyp_core.HnswIndex (core: fyp_core::ann).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
