//! The counterfactual event log: non-blocking append-only Parquet writer (DESIGN.md §4).
