-- Calibration of every model_version's frozen pred_finish against the finish label (completed
-- within window_hours): impressions split into prediction deciles per model (decile = 1 +
-- floor(10 * rows in lower 1e-4 prediction bins / rows), a bin stays in one decile), and per
-- decile the reweighted mean prediction (exact) and observed rate (a reliability diagram).
-- Everything is computed from per-bin sums, so nothing sorts the raw rows.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read shadow_calibration.sql"
-- Generated from queries/views.sql and queries/shadow_calibration.sql by
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
ranker_scores AS (
    SELECT * FROM read_parquet(getvariable('root') || '/ranker_scores/*/*/*.parquet',
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
, by_value AS (
    SELECT s.model_version, bool_or(s.is_shadow) AS is_shadow,
           floor(CAST(s.pred_finish AS DOUBLE) * 10000) AS bin, count(*) AS cnt, sum(o.w) AS s_w,
           sum(o.w * s.pred_finish) AS s_wp, sum(o.w * o.completed::INT) AS s_wy,
           min(s.pred_finish) AS pred_min, max(s.pred_finish) AS pred_max
    FROM ranker_scores s
    JOIN outcomes o USING (impression_key)
    GROUP BY s.model_version, bin
),
cum AS (
    SELECT *,
           sum(cnt) OVER (PARTITION BY model_version ORDER BY bin
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - cnt AS rows_before,
           sum(cnt) OVER (PARTITION BY model_version) AS n_rows
    FROM by_value
)
SELECT model_version, bool_or(is_shadow) AS is_shadow,
       least(10, 1 + floor(10 * rows_before / n_rows))::INTEGER AS decile,
       sum(cnt)::BIGINT AS n, sum(s_wp) / sum(s_w) AS mean_pred, sum(s_wy) / sum(s_w) AS observed,
       min(pred_min) AS pred_min, max(pred_max) AS pred_max
FROM cum
GROUP BY model_version, decile
ORDER BY model_version, decile;
