-- select_batch_factors: the current state of every key the batch touches.
-- Input stored_factors holds the model's stored rows for the batch's ids (the store already
-- skipped files that hold none of them). Current = the row with the largest version per
-- (side, id); a row with NULL bias is a tombstone (key removed by a rollback) and means unseen.
-- (A join with the latest version per key: cheaper than a window, which would carry every
-- row's vector through a sort or an arg_max.)
SELECT s.side, s.id, s.n, s.bias, CAST(s.vector AS DOUBLE[]) AS vector
FROM stored_factors AS s
JOIN (
    SELECT side, id, MAX(version) AS version
    FROM stored_factors
    GROUP BY side, id
) AS latest
    ON s.side = latest.side AND s.id = latest.id AND s.version = latest.version
WHERE s.bias IS NOT NULL
