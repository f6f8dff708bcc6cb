//! Diversity and policy re-ranking (DESIGN.md §3, `fyp_core.Reranker`, `fyp_core.dpp_greedy`):
//! the stage after the ranker that enforces topic, creator and safety caps, a fresh-item floor,
//! and MMR or DPP diversity. Configured, not trained (DESIGN.md invariant 3).

mod caps;
mod dpp;
mod kernel;
mod lazy;
mod mmr;
mod pinned;
mod policy;
mod policy_parse;
mod reranker;
mod scratch;

pub use dpp::dpp_greedy;
pub use mmr::mmr_greedy;
pub use pinned::{FullKeys, PinnedCaps};
pub use policy::{
    cap_count, unknown_key, CategoryCap, Diversity, Policy, Rule, MAX_WINDOW, POLICY_KEYS,
};
pub use reranker::{Candidates, Pinned, Relaxed, RerankOutcome, Reranker, RERANK_DPP_EPS};

#[cfg(test)]
mod tests;
