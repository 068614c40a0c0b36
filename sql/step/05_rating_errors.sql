-- rating_errors: e = r - (μ + b_u + b_i + U_u·P_i), all from the factors as they were
-- before the batch (μ already includes the batch: it is a statistic, not a learned value).
-- Also each rating's prequential prediction: the model before the batch, with the
-- cold-start rule of score_ratings.sql (an unseen key contributes no bias and no dot product),
-- clipped to the scale; NULL before the model's first batch (GREATEST/LEAST skip NULLs).
SELECT r.rating_seq, r.user_id, r.item_id, r.rating,
       r.rating - (g.mu + u.bias + i.bias + vec_dot(u.vector, i.vector)) AS err,
       CASE WHEN g.mu_before IS NOT NULL THEN LEAST(s.clip_high, GREATEST(s.clip_low,
           g.mu_before + CASE WHEN u.unseen THEN 0.0 ELSE u.bias END + CASE WHEN i.unseen THEN 0.0 ELSE i.bias END
           + CASE WHEN u.unseen OR i.unseen THEN 0.0 ELSE vec_dot(u.vector, i.vector) END)) END AS prediction
FROM batch_ratings AS r
CROSS JOIN global_state AS g
CROSS JOIN score_params AS s
JOIN key_factors AS u ON u.side = 'user' AND u.id = r.user_id
JOIN key_factors AS i ON i.side = 'item' AND i.id = r.item_id
