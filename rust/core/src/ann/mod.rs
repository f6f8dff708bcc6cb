//! Candidate generation: the HNSW index (DESIGN.md §3, `fyp_core.HnswIndex`).
//!
//! `index` is the public API; `graph` the algorithm; `store` the never-moving node storage (`pages` its buffers);
//! `distance` the SIMD kernels; `quant` and `f16` the traversal codes; `scratch` per-thread
//! visited sets; `persist` the file format.

mod churn;
mod determ;
pub mod distance;
mod epoch;
mod f16;
mod graph;
mod ids;
mod index;
mod pages;
mod persist;
mod pool;
mod quant;
mod scratch;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_codes;
#[cfg(test)]
mod tests_robust;
mod upper;

pub use distance::{simd_level, Metric};
pub use index::{
    Exclude, HnswIndex, HnswParams, HnswStats, IdSet, IndexCut, SearchResult, CALIBRATE_AT,
    MAX_CAPACITY, MAX_K, PAD_ID,
};
pub use quant::Quantize;
