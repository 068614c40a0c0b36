-- join_batch_factors: the batch's users and items FULL OUTER JOIN their current factors.
-- Keys of the batch without a stored row are unseen (they get an initial value next);
-- stored rows the batch does not touch pass through flagged in_batch = false and are dropped.
WITH batch_keys AS (
    SELECT DISTINCT 'user' AS side, user_id AS id FROM batch_ratings
    UNION ALL
    SELECT DISTINCT 'item' AS side, item_id AS id FROM batch_ratings
)
SELECT COALESCE(k.side, f.side) AS side,
       COALESCE(k.id, f.id) AS id,
       k.id IS NOT NULL AS in_batch,
       f.id IS NULL AS unseen,
       f.n, f.bias, f.vector
FROM batch_keys AS k
FULL OUTER JOIN (SELECT * FROM batch_factors WHERE side <> 'global') AS f
    ON k.side = f.side AND k.id = f.id
