-- Daily summary: slots served (reweighted), exploration and fresh shares, engagement rate per arm,
-- and the share of engaged impressions whose engagement arrived after the window (late).
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read daily_summary.sql"
SELECT day,
       sum(w) AS slots,
       count(*) AS rows_logged,
       sum(w) FILTER (WHERE source = 'exploration') / sum(w) AS exploration_share,
       sum(w) FILTER (WHERE source = 'fresh') / sum(w) AS fresh_share,
       sum(w * engaged::INT) / sum(w) AS engagement_rate,
       sum(w * engaged::INT) FILTER (WHERE source = 'ranked')
           / sum(w) FILTER (WHERE source = 'ranked') AS ranked_rate,
       sum(w * engaged::INT) FILTER (WHERE source = 'exploration')
           / sum(w) FILTER (WHERE source = 'exploration') AS exploration_rate,
       sum(w * engaged_late::INT) / nullif(sum(w * (engaged OR engaged_late)::INT), 0)
           AS late_share,
       sum(w * watched_seconds) / sum(w) AS watched_seconds_per_slot
FROM outcomes
GROUP BY ALL
ORDER BY day;
