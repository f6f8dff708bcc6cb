-- Causal lift per topic: (ranked engagement rate - exploration engagement rate) / exploration rate.
-- Exploration slots show a uniformly random eligible item, so their rate is the counterfactual
-- "no algorithm" baseline on the same traffic. Rates are reweighted by 100 / sampled_pct, the 95%
-- interval is the delta-method interval of log(ranked / exploration) with the linearised variance
-- of each weighted rate, sum(w^2 (y - p)^2) / sum(w)^2 (NULL when a rate is 0). topic IS NULL is
-- the all-topics row.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read lift_by_topic.sql"
WITH arms AS (
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
