//! Core scoring: the dense multi-task MLP heavy ranker (DESIGN.md §3, `fyp_core.MlpRanker`).
