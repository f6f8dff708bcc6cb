//! `fyp_core._core`: the PyO3 extension. It converts Python/numpy values, releases the GIL around
//! real work and maps core errors to Python exceptions; all logic lives in the `fyp-core` crate.

use pyo3::prelude::*;

mod convert;
mod errors;
mod eventlog;
mod features;
mod hnsw;
mod pipeline;
mod ranker;
mod rerank;
mod split;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    split::register(m)?;
    hnsw::register(m)?;

    ranker::register(m)?;

    rerank::register(m)?;

    eventlog::register(m)?;
    pipeline::register(m)?;
    features::register(m)?;
    Ok(())
}
