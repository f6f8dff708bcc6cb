-- Causal lift per topic: (ranked engagement rate - exploration engagement rate) / exploration rate.
-- Exploration slots show a uniformly random eligible item, so their rate is the counterfactual
-- "no algorithm" baseline on the same traffic. Rates are reweighted by 100 / sampled_pct, the 95%
-- interval is the delta-method interval of log(ranked / exploration) with the linearised variance
-- of each weighted rate, sum(w^2 (y - p)^2) / sum(w)^2 (NULL when a rate is 0). topic IS NULL is
-- the all-topics row.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read lift_by_topic.sql"
-- Generated from queries/views.sql and queries/lift_by_topic.sql by
-- `python -m fyp_core.analytics.sqlsource`: edit those, not this file.
SET TimeZone = 'UTC';

-- <prelude>
-- The views every analytics query reads (one source: the engines create them once per connection
-- or session, the standalone files in sql/ inline them as common table expressions).
-- imp: impressions with w = 100 / sampled_pct (the sampling reweight, exploration rows have w = 1)
-- and day = the UTC date of ts, taken from the dt partition, time arithmetic uses epoch microseconds
-- (ts_us), which avoids per-row time-zone calendar work on TIMESTAMPTZ.
-- outcomes: each impression joined to its engagements by impression_key (the integer key of the
-- impression id, schema v2), a flag counts when its first engagement row arrives within
-- window_hours of the impression (default 24) (later rows are late engagements), watched_seconds
-- sums the impression's engagement rows when its first row is within the window.
WITH
impressions AS (
    SELECT * FROM read_parquet(getvariable('root') || '/impressions/*/*/*.parquet',
                               hive_partitioning = true,
                               hive_types = {'dt': VARCHAR, 'hour': INTEGER})
),
engagements AS (
    SELECT * FROM read_parquet(getvariable('root') || '/engagements/*/*/*.parquet',
                               hive_partitioning = true,
                               hive_types = {'dt': VARCHAR, 'hour': INTEGER})
),
imp AS (
    SELECT impression_id, impression_key, ts, epoch_us(ts) AS ts_us, dt, CAST(dt AS DATE) AS day,
           request_id, user_token, item_id, position, source, propensity, model_version, topic, creator_id,
           sampled_pct, 100.0 / sampled_pct AS w
    FROM impressions
),
eng AS (
    SELECT impression_key,
           epoch_us(min(ts)) AS t_first,
           epoch_us(min(ts) FILTER (WHERE completed OR liked OR shared OR followed)) AS t_engaged,
           epoch_us(min(ts) FILTER (WHERE completed)) AS t_completed,
           epoch_us(min(ts) FILTER (WHERE liked)) AS t_liked,
           epoch_us(min(ts) FILTER (WHERE shared)) AS t_shared,
           epoch_us(min(ts) FILTER (WHERE followed)) AS t_followed,
           sum(watched_seconds) AS watched_seconds
    FROM engagements
    GROUP BY impression_key
),
outcomes AS (
    SELECT imp.*,
           coalesce(eng.t_engaged <= imp.ts_us + win.d, false) AS engaged,
           coalesce(eng.t_completed <= imp.ts_us + win.d, false) AS completed,
           coalesce(eng.t_liked <= imp.ts_us + win.d, false) AS liked,
           coalesce(eng.t_shared <= imp.ts_us + win.d, false) AS shared,
           coalesce(eng.t_followed <= imp.ts_us + win.d, false) AS followed,
           coalesce(eng.t_engaged > imp.ts_us + win.d, false) AS engaged_late,
           CASE WHEN eng.t_first <= imp.ts_us + win.d THEN eng.watched_seconds ELSE 0 END
               AS watched_seconds
    FROM imp
    LEFT JOIN eng USING (impression_key)
    CROSS JOIN (SELECT CAST(coalesce(getvariable('window_hours'), 24) * 3600e6 AS BIGINT) AS d)
        AS win
)
-- </prelude>
, arms AS (
    SELECT topic, source,
           count(*) AS n_rows, sum(w) AS s_w, sum(w * engaged::INT) AS s_wy,
           sum(w * w) AS s_w2, sum(w * w * engaged::INT) AS s_w2y
    FROM outcomes
    WHERE source IN ('ranked', 'exploration')
    GROUP BY GROUPING SETS ((topic, source), (source))
),
rates AS (
    SELECT topic, source, n_rows, s_w, s_wy / s_w AS p,
           (s_w2y * (1 - 2 * (s_wy / s_w)) + (s_wy / s_w) ^ 2 * s_w2) / (s_w * s_w) AS var
    FROM arms
),
pairs AS (
    SELECT r.topic, r.n_rows AS ranked_rows, r.s_w AS ranked_impressions, r.p AS ranked_rate,
           e.n_rows AS exploration_rows, e.s_w AS exploration_impressions, e.p AS exploration_rate,
           CASE WHEN r.p > 0 AND e.p > 0
                THEN sqrt(r.var / (r.p * r.p) + e.var / (e.p * e.p)) END AS se_log_ratio
    FROM (SELECT * FROM rates WHERE source = 'ranked') r
    JOIN (SELECT * FROM rates WHERE source = 'exploration') e
      ON r.topic IS NOT DISTINCT FROM e.topic
)
SELECT topic, ranked_rows, ranked_impressions, ranked_rate,
       exploration_rows, exploration_impressions, exploration_rate,
       CASE WHEN exploration_rate > 0 THEN ranked_rate / exploration_rate - 1 END AS lift,
       CASE WHEN exploration_rate > 0 AND ranked_rate > 0
            THEN exp(ln(ranked_rate / exploration_rate) - 1.959964 * se_log_ratio) - 1 END AS lift_lo,
       CASE WHEN exploration_rate > 0 AND ranked_rate > 0
            THEN exp(ln(ranked_rate / exploration_rate) + 1.959964 * se_log_ratio) - 1 END AS lift_hi,
       se_log_ratio
FROM pairs
ORDER BY topic NULLS LAST;
