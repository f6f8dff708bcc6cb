-- Position bias: engagement rate by feed position per arm (reweighted), with a 95% interval and the
-- rate relative to position 0 of the same arm. The exploration arm shows uniformly random items at
-- every position, so its curve is the causal examination curve, the ranked curve mixes position
-- with the ranker putting its best items on top. arm = 'all' pools every source.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read position_bias.sql"
-- Generated from queries/views.sql and queries/position_bias.sql by
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
, by_pos AS (
    SELECT position, coalesce(source, 'all') AS arm,
           count(*) AS n_rows, sum(w) AS s_w, sum(w * engaged::INT) AS s_wy,
           sum(w * w) AS s_w2, sum(w * w * engaged::INT) AS s_w2y
    FROM outcomes
    GROUP BY GROUPING SETS ((position, source), (position))
),
curve AS (
    SELECT position, arm, n_rows, s_w AS impressions, s_wy / s_w AS rate,
           sqrt(greatest(s_w2y * (1 - 2 * (s_wy / s_w)) + (s_wy / s_w) ^ 2 * s_w2, 0)) / s_w AS se
    FROM by_pos
)
SELECT position, arm, n_rows, impressions, rate, se,
       rate - 1.959964 * se AS rate_lo, rate + 1.959964 * se AS rate_hi,
       rate / nullif(first_value(rate) OVER (PARTITION BY arm ORDER BY position), 0) AS rel_to_top
FROM curve
ORDER BY arm, position;
