-- Engagement joined to its impression by impression_id: one row per logged impression with its
-- outcome flags (within the late-engagement window), the sampling weight w and engaged_late.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read impression_outcomes.sql"
SELECT impression_id, ts, request_id, user_token, item_id, position, source, propensity,
       model_version, topic, creator_id, sampled_pct, w, engaged, completed, liked, shared,
       followed, engaged_late, watched_seconds
FROM outcomes;
