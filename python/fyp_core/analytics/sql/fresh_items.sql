-- Fresh-item retrieval from the logs. An item's first appearance is the earliest ts at which the
-- logs mention it: as a candidate in a (sampled) request or as an impression, items that existed
-- before the logs start look new on the first days (censored = first log day). Its freshness lag
-- is first impression - first appearance. Per day of first appearance: new items, the retrieval
-- rate (share shown within fresh_hours, default 24, of first appearance), lag quantiles over the
-- items shown, and per day the (reweighted) share of slots filled by the fresh source.
-- Parameters (DuckDB variables): root (log directory, required), fresh_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read fresh_items.sql"
-- Generated from queries/views.sql and queries/fresh_items.sql by
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
requests AS (
    SELECT * FROM read_parquet(getvariable('root') || '/requests/*/*/*.parquet',
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
, req AS (
    SELECT epoch_us(ts) AS ts_us, candidate_item_ids FROM requests
),
appear AS (
    SELECT item_id, min(ts_us) AS first_seen_us
    FROM (SELECT unnest(candidate_item_ids) AS item_id, ts_us FROM req
          UNION ALL
          SELECT item_id, ts_us FROM imp)
    GROUP BY item_id
),
first_imp AS (
    SELECT item_id, min(ts_us) AS first_impression_us FROM imp GROUP BY item_id
),
items AS (
    SELECT a.item_id, a.first_seen_us,
           (f.first_impression_us - a.first_seen_us) / 3600e6 AS lag_hours
    FROM appear a
    LEFT JOIN first_imp f USING (item_id)
),
by_day AS (
    SELECT DATE '1970-01-01' + CAST(first_seen_us // 86400000000 AS INTEGER) AS day,
           count(*) AS new_items,
           avg(CASE WHEN lag_hours <= coalesce(getvariable('fresh_hours'), 24) THEN 1.0
                    ELSE 0.0 END) AS retrieval_rate,
           quantile_cont(lag_hours, 0.5) AS lag_p50_hours,
           quantile_cont(lag_hours, 0.9) AS lag_p90_hours
    FROM items
    GROUP BY ALL
),
slots AS (
    SELECT day,
           coalesce(sum(w) FILTER (WHERE source = 'fresh'), 0) / sum(w) AS fresh_slot_share
    FROM imp
    GROUP BY ALL
)
SELECT day, new_items, retrieval_rate, lag_p50_hours, lag_p90_hours, fresh_slot_share,
       day = min(day) OVER () AS censored
FROM by_day
FULL JOIN slots USING (day)
ORDER BY day;
