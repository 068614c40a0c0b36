-- select_batch_factors: the current state of every key the batch touches.
-- Input latest_factors holds the latest stored row of each of the batch's keys (the store
-- already skipped files that hold none of them); a row with NULL bias is a tombstone (key
-- removed by a rollback) and means unseen.
SELECT side, id, n, bias, CAST(vector AS DOUBLE[]) AS vector
FROM latest_factors
WHERE bias IS NOT NULL
