-- Calibration of every model_version's frozen pred_finish against the finish label (completed
-- within window_hours): impressions split into prediction deciles per model (decile = 1 +
-- floor(10 * rows in lower 1e-4 prediction bins / rows), a bin stays in one decile), and per
-- decile the reweighted mean prediction (exact) and observed rate (a reliability diagram).
-- Everything is computed from per-bin sums, so nothing sorts the raw rows.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read shadow_calibration.sql"
WITH by_value AS (
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
