-- Creator concentration per UTC day: the Gini coefficient of (reweighted) impressions over the
-- creators shown that day, sum((2i - n - 1) x_(i)) / (n sum x) with x ascending, and the share of
-- impressions going to creators younger than young_days (default 7). A creator's age is measured
-- from its first-seen time = min(ts) of its impressions in the logs, creators active before the
-- logs start look young, so days within young_days of the first log day are flagged censored.
-- Parameters (DuckDB variables): root (log directory, required), young_days (default 7).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read creator_gini.sql"
WITH first_seen AS (
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
