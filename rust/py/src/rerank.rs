//! Binding for fyp_core.Reranker and dpp_greedy (core: fyp_core::rerank).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
