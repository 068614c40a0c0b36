-- rating_gradients: each rating's step for its user and for its item, as vectors
-- (vec_axpby(a, x, b, y) = a x + b y, component by component):
--   ΔU_u = γ (e P_i - λ U_u)      ΔP_i = γ (e U_u - λ P_i)
SELECT e.user_id, e.item_id, e.err,
       vec_axpby(p.gamma * e.err, e.item_vector, -p.gamma * p.lambda_, e.user_vector) AS user_grad,
       vec_axpby(p.gamma * e.err, e.user_vector, -p.gamma * p.lambda_, e.item_vector) AS item_grad
FROM rating_errors AS e
CROSS JOIN step_params AS p
