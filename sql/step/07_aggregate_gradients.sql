-- aggregate_gradients: GROUP BY user and GROUP BY item: the summed step (vec_sum: one SUM per
-- vector component), the number of the key's ratings in the batch and the sum of their
-- errors (for the bias update).
SELECT 'user' AS side, user_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum, vec_sum(user_grad) AS grad_sum
FROM rating_gradients
GROUP BY user_id
UNION ALL
SELECT 'item' AS side, item_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum, vec_sum(item_grad) AS grad_sum
FROM rating_gradients
GROUP BY item_id
