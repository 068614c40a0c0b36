-- aggregate_gradients: GROUP BY user and GROUP BY item. Each rating's gradient step is
--   ΔU_u = γ (e P_i - λ U_u)      ΔP_i = γ (e U_u - λ P_i);
-- the regulariser term is the same for every rating of a key, so its sum over the batch is
-- written out in apply_gradients (γ λ n_batch U_u) and only e P_i (e U_u) is summed per rating
-- here (vec_weighted_sum: one SUM per vector component), with the number of the key's ratings
-- in the batch and the sum of their errors (for the bias update). Sums are exact_sum: the same
-- whatever order the engine adds the terms in (see als_core/engines/sqlgen.py). The other
-- side's vectors are joined here rather than carried through rating_errors: its rows are
-- stored once for three readers, and copying two vectors per rating into that store cost
-- more than these two joins.
SELECT 'user' AS side, e.user_id AS id, COUNT(*) AS n_batch, exact_sum(e.err) AS err_sum,
       vec_weighted_sum(e.err, i.vector) AS err_vector_sum
FROM rating_errors AS e
JOIN key_factors AS i ON i.side = 'item' AND i.id = e.item_id
GROUP BY e.user_id
UNION ALL
SELECT 'item' AS side, e.item_id AS id, COUNT(*) AS n_batch, exact_sum(e.err) AS err_sum,
       vec_weighted_sum(e.err, u.vector) AS err_vector_sum
FROM rating_errors AS e
JOIN key_factors AS u ON u.side = 'user' AND u.id = e.user_id
GROUP BY e.item_id
