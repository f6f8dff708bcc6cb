//! Binding for fyp_core.MlpRanker (core: fyp_core::rank).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
