//! Core scoring: the dense multi-task MLP heavy ranker (DESIGN.md §3, `fyp_core.MlpRanker`), its
//! feature assembly, model files and the live + shadow ranker set the pipeline scores with.
//!
//! `gemm` holds the tile kernels, `mlp` the model, `features` the per-request input assembly,
//! `model_file` the versioned file format and `set` the atomically switched live/shadow set.

pub mod act;
pub mod features;
pub mod gemm;
mod json;
pub mod mlp;
pub mod model_file;
mod scratch;
pub mod set;

pub use act::{Activation, OutputTransform};
pub use features::{Assembly, DotFeature};
pub use gemm::Kernel;
pub use mlp::{value_with, DenseLayer, LayerSpec, Mlp, MlpConfig};
pub use set::{RankerSet, RankerSnapshot, SetScores, VersionScores};

#[cfg(test)]
mod tests;
