-- Each impression's outcome relative to its slot's norm: slot_norm is the reweighted engagement
-- rate of every impression at the same position (a window over position), residual = engaged -
-- slot_norm and lift_vs_slot = engaged / slot_norm. Averaging residuals by topic, creator or
-- model_version compares them net of where in the feed they were shown.
-- Parameters (DuckDB variables): root (log directory, required), window_hours (default 24).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read slot_residuals.sql"
WITH normed AS (
    SELECT impression_id, ts, position, source, topic, creator_id, model_version, w, engaged,
           sum(w * engaged::INT) OVER (PARTITION BY position)
               / sum(w) OVER (PARTITION BY position) AS slot_norm
    FROM outcomes
)
SELECT impression_id, ts, position, source, topic, creator_id, model_version, w, engaged,
       slot_norm, engaged::INT - slot_norm AS residual,
       engaged::INT / nullif(slot_norm, 0) AS lift_vs_slot
FROM normed;
