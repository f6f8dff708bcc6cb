//! Diversity and policy re-ranking: caps, fairness floor, MMR, DPP (DESIGN.md §3, `fyp_core.Reranker`).
