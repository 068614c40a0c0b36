-- model_versions: one row per model version (every version writes the global row, and
-- compaction keeps those rows), with the batch it applied and the model's settings.
CREATE OR REPLACE VIEW model_versions AS
SELECT f.model_id, f.version, f.batch_seq, f.n AS ratings_seen, f.bias AS mu,
       m.status, m.rank, m.gamma, m.lambda_, m.lambda_bias, m.aggregation, m.bias_update
FROM factors AS f
LEFT JOIN models AS m ON m.model_id = f.model_id
WHERE f.side = 'global';
