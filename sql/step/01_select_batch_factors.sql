-- select_batch_factors: the current state of every key the batch touches.
-- Input stored_factors holds the model's stored rows for the batch's ids (the store already
-- skipped files that hold none of them). Current = the row with the largest version per
-- (side, id); a row with NULL bias is a tombstone (key removed by a rollback) and means unseen.
SELECT side, id, n, bias, CAST(vector AS DOUBLE[]) AS vector
FROM (
    SELECT side, id, n, bias, vector,
           ROW_NUMBER() OVER (PARTITION BY side, id ORDER BY version DESC) AS recency
    FROM stored_factors
) AS ranked
WHERE recency = 1 AND bias IS NOT NULL
