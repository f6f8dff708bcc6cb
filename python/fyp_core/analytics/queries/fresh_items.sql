-- Fresh-item retrieval from the logs. An item's first appearance is the earliest ts at which the
-- logs mention it: as a candidate in a (sampled) request or as an impression, items that existed
-- before the logs start look new on the first days (censored = first log day). Its freshness lag
-- is first impression - first appearance. Per day of first appearance: new items, the retrieval
-- rate (share shown within fresh_hours, default 24, of first appearance), lag quantiles over the
-- items shown, and per day the (reweighted) share of slots filled by the fresh source.
-- Parameters (DuckDB variables): root (log directory, required), fresh_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read fresh_items.sql"
WITH req AS (
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
