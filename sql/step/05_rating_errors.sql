-- rating_errors: e = r - (μ + b_u + b_i + U_u·P_i), all from the factors as they were
-- before the batch (μ already includes the batch: it is a statistic, not a learned value).
SELECT r.rating_seq, r.user_id, r.item_id,
       r.rating - (g.mu + u.bias + i.bias + vec_dot(u.vector, i.vector)) AS err,
       u.vector AS user_vector,
       i.vector AS item_vector
FROM batch_ratings AS r
CROSS JOIN global_state AS g
JOIN key_factors AS u ON u.side = 'user' AND u.id = r.user_id
JOIN key_factors AS i ON i.side = 'item' AND i.id = r.item_id
