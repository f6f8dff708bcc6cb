-- Creator concentration per UTC day: the Gini coefficient of (reweighted) impressions over the
-- creators shown that day, sum((2i - n - 1) x_(i)) / (n sum x) with x ascending, and the share of
-- impressions going to creators younger than young_days (default 7). A creator's age is measured
-- from its first-seen time = min(ts) of its impressions in the logs, creators active before the
-- logs start look young, so days within young_days of the first log day are flagged censored.
-- Parameters (DuckDB variables): root (log directory, required), young_days (default 7).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read creator_gini.sql"
-- Generated from queries/views.sql and queries/creator_gini.sql by
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
, first_seen AS (
    SELECT creator_id, min(ts_us) AS first_seen_us FROM imp GROUP BY creator_id
),
daily AS (
    SELECT day, creator_id, sum(w) AS x FROM imp GROUP BY ALL
),
ordered AS (
    SELECT day, x,
           row_number() OVER (PARTITION BY day ORDER BY x) AS i,
           count(*) OVER (PARTITION BY day) AS n,
           sum(x) OVER (PARTITION BY day) AS total
    FROM daily
),
gini AS (
    SELECT day, any_value(n) AS creators, any_value(total) AS impressions,
           sum((2 * i - n - 1) * x) / (any_value(n) * any_value(total)) AS gini
    FROM ordered
    GROUP BY day
),
young AS (
    SELECT day,
           -- coalesce: a day without young-creator impressions has share 0.0, not NULL
           coalesce(sum(w) FILTER (WHERE ts_us - first_seen_us
                                   < coalesce(getvariable('young_days'), 7) * 86400e6), 0)
               / sum(w) AS young_creator_share
    FROM imp
    JOIN first_seen USING (creator_id)
    GROUP BY ALL
)
SELECT day, creators, impressions, gini, young_creator_share,
       day < min(day) OVER () + CAST(coalesce(getvariable('young_days'), 7) AS INTEGER)
           AS censored
FROM gini
JOIN young USING (day)
ORDER BY day;
