//! fyp_core: the pure-Rust core of the For You feed's hot path (DESIGN.md §1).
//!
//! Every algorithm lives here once, tested with `cargo test`; the PyO3 crate in `rust/py` only
//! converts types, releases the GIL and maps [`Error`] to Python exceptions.

pub mod ann;
pub mod cancel;
pub mod config;
pub mod error;
pub mod eventlog;
pub mod rank;
pub mod rerank;
pub mod serve;
pub mod split;

pub use error::{Error, Result};
