-- rating_gradients: each rating's step for its user and its item, one row per vector
-- component k (long form, so the aggregation below is a plain GROUP BY in any engine):
--   ΔU_u[k] = γ (e P_i[k] - λ U_u[k])      ΔP_i[k] = γ (e U_u[k] - λ P_i[k])
SELECT 'user' AS side, e.user_id AS id, c.k,
       p.gamma * (e.err * vec_get(e.item_vector, c.k) - p.lambda_ * vec_get(e.user_vector, c.k)) AS grad
FROM rating_errors AS e CROSS JOIN components AS c CROSS JOIN step_params AS p
UNION ALL
SELECT 'item' AS side, e.item_id AS id, c.k,
       p.gamma * (e.err * vec_get(e.user_vector, c.k) - p.lambda_ * vec_get(e.item_vector, c.k)) AS grad
FROM rating_errors AS e CROSS JOIN components AS c CROSS JOIN step_params AS p
