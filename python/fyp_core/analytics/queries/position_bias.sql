-- Position bias: engagement rate by feed position per arm (reweighted), with a 95% interval and the
-- rate relative to position 0 of the same arm. The exploration arm shows uniformly random items at
-- every position, so its curve is the causal examination curve, the ranked curve mixes position
-- with the ranker putting its best items on top. arm = 'all' pools every source.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read position_bias.sql"
WITH by_pos AS (
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
