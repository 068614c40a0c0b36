-- aggregate_gradients: GROUP BY user and item: the summed step per component, the number of
-- the key's ratings in the batch and the sum of their errors (for the bias update).
WITH per_component AS (
    SELECT side, id, k, SUM(grad) AS grad_sum
    FROM rating_gradients
    GROUP BY side, id, k
),
per_key AS (
    SELECT 'user' AS side, user_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum
    FROM rating_errors GROUP BY user_id
    UNION ALL
    SELECT 'item' AS side, item_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum
    FROM rating_errors GROUP BY item_id
)
SELECT c.side, c.id, c.k, c.grad_sum, k.n_batch, k.err_sum
FROM per_component AS c
JOIN per_key AS k ON k.side = c.side AND k.id = c.id
