-- select_batch_factors: the current state of every key the batch touches.
-- Input latest_factors holds the latest stored row of each of the batch's keys (the store
-- already skipped files that hold none of them); a row with NULL bias is a tombstone (key
-- removed by a rollback) and means unseen.
-- vec_load: the stored FLOAT[] as the step's DOUBLE vector (in DuckDB a STRUCT of one field
-- per component: joins carry it as fixed-size columns, where a list is a variable-size
-- payload; see als_core/engines/sqlgen.py).
SELECT side, id, n, bias, vec_load(vector) AS vector
FROM latest_factors
WHERE bias IS NOT NULL
