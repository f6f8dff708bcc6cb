//! Candidate generation: the HNSW index (DESIGN.md §3, `fyp_core.HnswIndex`).
