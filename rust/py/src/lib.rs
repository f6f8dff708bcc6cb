//! `fyp_core._core`: the PyO3 extension. It converts Python/numpy values, releases the GIL around
//! real work and maps core errors to Python exceptions; all logic lives in the `fyp-core` crate.

use pyo3::prelude::*;

mod convert;
mod errors;
mod split;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    split::register(m)?;
    Ok(())
}
