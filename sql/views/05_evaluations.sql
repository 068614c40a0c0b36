-- evaluations: holdout, prequential and batch-baseline RMSE/MAE per model version, newest
-- first, with the model's status.
CREATE OR REPLACE VIEW evaluation_history AS
SELECT e.model_id, e.version, e.kind, e.rmse, e.mae, e.n, e.evaluated_at, m.status
FROM evaluations AS e
LEFT JOIN models AS m ON m.model_id = e.model_id
ORDER BY e.evaluated_at DESC;
