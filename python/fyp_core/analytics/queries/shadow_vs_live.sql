-- Shadow vs live on identical impressions. For each shadow model_version, the pair set is every
-- impression scored by that shadow AND by the live model (is_shadow = false) with a logged outcome,
-- both models are scored on exactly that set. Metrics use the frozen pred_finish against the
-- finish label (completed within window_hours), reweighted by 100 / sampled_pct: log-loss, Brier,
-- AUC (weighted Mann-Whitney over predictions binned at 1e-4, a bin's ties count half), ECE over
-- prediction deciles (decile = 1 + floor(10 * rows in lower 1e-4 bins / rows), a bin stays in
-- one decile), the
-- paired log-loss difference shadow - live with a 95% interval, and a verdict:
--   'not ready'    shadow log-loss significantly worse, or shadow ECE > live ECE + 0.02
--   'ready'        shadow log-loss significantly better, AUC >= live - 0.005, ECE <= live + 0.01
--   'inconclusive' otherwise (collect more traffic)
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read shadow_vs_live.sql"
WITH scores AS (
    SELECT impression_key, model_version, is_shadow,
           least(greatest(CAST(pred_finish AS DOUBLE), 1e-7), 1 - 1e-7) AS pred
    FROM ranker_scores
),
pairs AS MATERIALIZED (
    SELECT sh.model_version AS shadow_version, lv.model_version AS live_version,
           o.w, o.completed::INT AS y, sh.pred AS ps, lv.pred AS pl
    FROM (SELECT * FROM scores WHERE is_shadow) sh
    JOIN (SELECT * FROM scores WHERE NOT is_shadow) lv USING (impression_key)
    JOIN outcomes o USING (impression_key)
),
-- per (shadow, role, prediction bin of width 1e-4): row count, positive / negative weight and
-- exact sums of w * pred, log-loss and squared error, every metric below is a function of these
-- sums, so no step sorts the raw rows (AUC and deciles see predictions at 1e-4 resolution)
by_value AS (
    SELECT shadow_version, role, bin, sum(cnt) AS cnt, sum(pos) AS pos, sum(neg) AS neg,
           sum(s_wp) AS s_wp, sum(s_ll) AS s_ll, sum(s_br) AS s_br
    FROM (SELECT shadow_version, 'shadow' AS role, floor(ps * 10000) AS bin, count(*) AS cnt,
                 sum(w * y) AS pos, sum(w * (1 - y)) AS neg, sum(w * ps) AS s_wp,
                 -sum(w * (y * ln(ps) + (1 - y) * ln(1 - ps))) AS s_ll,
                 sum(w * (ps - y) ^ 2) AS s_br
          FROM pairs GROUP BY ALL
          UNION ALL
          SELECT shadow_version, 'live' AS role, floor(pl * 10000) AS bin, count(*) AS cnt,
                 sum(w * y) AS pos, sum(w * (1 - y)) AS neg, sum(w * pl) AS s_wp,
                 -sum(w * (y * ln(pl) + (1 - y) * ln(1 - pl))) AS s_ll,
                 sum(w * (pl - y) ^ 2) AS s_br
          FROM pairs GROUP BY ALL)
    GROUP BY ALL
),
cum AS MATERIALIZED (
    SELECT *,
           sum(cnt) OVER w_ord - cnt AS rows_before,
           sum(neg) OVER w_ord - neg AS neg_below,
           sum(cnt) OVER (PARTITION BY shadow_version, role) AS n_rows
    FROM by_value
    WINDOW w_ord AS (PARTITION BY shadow_version, role ORDER BY bin
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
per_value_decile AS (
    SELECT *, least(10, 1 + floor(10 * rows_before / n_rows))::INTEGER AS decile FROM cum
),
metrics AS (
    SELECT shadow_version, role, sum(cnt)::BIGINT AS n,
           sum(s_ll) / sum(pos + neg) AS log_loss,
           sum(s_br) / sum(pos + neg) AS brier,
           sum(s_wp) / sum(pos + neg) AS mean_pred,
           sum(pos) / sum(pos + neg) AS observed,
           sum(pos * (neg_below + 0.5 * neg)) / nullif(sum(pos) * sum(neg), 0) AS auc
    FROM cum
    GROUP BY ALL
),
ece AS (
    SELECT shadow_version, role, sum(abs(s_wp - s_wy)) / sum(s_w) AS ece
    FROM (SELECT shadow_version, role, decile, sum(pos + neg) AS s_w,
                 sum(s_wp) AS s_wp, sum(pos) AS s_wy
          FROM per_value_decile GROUP BY ALL)
    GROUP BY ALL
),
per_role AS (
    SELECT * FROM metrics JOIN ece USING (shadow_version, role)
),
paired AS (
    SELECT shadow_version, string_agg(DISTINCT live_version, ',') AS live_version,
           sum(w * d) / sum(w) AS ll_diff,
           sqrt(greatest(sum(w * w * d * d) - 2 * (sum(w * d) / sum(w)) * sum(w * w * d)
                         + (sum(w * d) / sum(w)) ^ 2 * sum(w * w), 0)) / sum(w) AS ll_diff_se
    FROM (SELECT *, (y * ln(pl) + (1 - y) * ln(1 - pl)) - (y * ln(ps) + (1 - y) * ln(1 - ps)) AS d
          FROM pairs)
    GROUP BY ALL
),
wide AS (
    SELECT p.shadow_version, p.live_version, s.n,
           s.log_loss AS shadow_log_loss, l.log_loss AS live_log_loss,
           s.auc AS shadow_auc, l.auc AS live_auc,
           s.brier AS shadow_brier, l.brier AS live_brier,
           s.ece AS shadow_ece, l.ece AS live_ece,
           s.mean_pred AS shadow_mean_pred, l.mean_pred AS live_mean_pred, s.observed,
           p.ll_diff, p.ll_diff - 1.959964 * p.ll_diff_se AS ll_diff_lo,
           p.ll_diff + 1.959964 * p.ll_diff_se AS ll_diff_hi
    FROM paired p
    JOIN (SELECT * FROM per_role WHERE role = 'shadow') s USING (shadow_version)
    JOIN (SELECT * FROM per_role WHERE role = 'live') l USING (shadow_version)
)
SELECT *,
       CASE WHEN ll_diff_lo > 0 OR shadow_ece > live_ece + 0.02 THEN 'not ready'
            WHEN ll_diff_hi < 0 AND shadow_auc >= live_auc - 0.005
                 AND shadow_ece <= live_ece + 0.01 THEN 'ready'
            ELSE 'inconclusive' END AS verdict
FROM wide
ORDER BY shadow_version;
