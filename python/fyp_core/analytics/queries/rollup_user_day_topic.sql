-- De-identified rollup kept after retention deletes raw partitions: one row per
-- (user_token, dt, topic) with reweighted counts (no item, request, creator or impression ids).
-- dt is the UTC date of the impression (its partition), engagements count within window_hours.
-- Parameters (DuckDB variables): root (log directory, required), dt_from and dt_to (inclusive,
-- 'YYYY-MM-DD', required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" \
--   -c "SET VARIABLE dt_from = '2026-01-01'" -c "SET VARIABLE dt_to = '2026-01-31'" \
--   -c ".read rollup_user_day_topic.sql"
SELECT user_token, dt, topic,
       count(*) AS impression_rows,
       sum(w) AS impressions,
       coalesce(sum(w) FILTER (WHERE source = 'exploration'), 0) AS exploration_impressions,
       sum(w * engaged::INT) AS engaged,
       sum(w * completed::INT) AS completed,
       sum(w * liked::INT) AS liked,
       sum(w * shared::INT) AS shared,
       sum(w * followed::INT) AS followed,
       sum(w * watched_seconds) AS watched_seconds
FROM outcomes
WHERE dt BETWEEN getvariable('dt_from') AND getvariable('dt_to')
GROUP BY ALL
ORDER BY dt, user_token, topic;
