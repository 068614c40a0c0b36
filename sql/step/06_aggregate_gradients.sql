-- aggregate_gradients: GROUP BY user and GROUP BY item. Each rating's gradient step is
--   ΔU_u = γ (e P_i - λ U_u)      ΔP_i = γ (e U_u - λ P_i);
-- the regulariser term is the same for every rating of a key, so its sum over the batch is
-- written out in apply_gradients (γ λ n_batch U_u) and only e P_i (e U_u) is summed per rating
-- here (vec_weighted_sum: one SUM per vector component), with the number of the key's ratings
-- in the batch and the sum of their errors (for the bias update).
SELECT 'user' AS side, user_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum,
       vec_weighted_sum(err, item_vector) AS err_vector_sum
FROM rating_errors
GROUP BY user_id
UNION ALL
SELECT 'item' AS side, item_id AS id, COUNT(*) AS n_batch, SUM(err) AS err_sum,
       vec_weighted_sum(err, user_vector) AS err_vector_sum
FROM rating_errors
GROUP BY item_id
