-- score_ratings: predict ratings with a model state, cold-start rule included: an unknown
-- user or item contributes bias 0 and no dot product, so the prediction falls back to
-- μ + the known bias. Predictions are clipped to the rating scale.
-- Inputs: ratings_to_score(rating_seq, user_id, item_id, rating),
--         model_state(side, id, bias, vector) (current rows, global row included),
--         score_params(clip_low, clip_high).
SELECT r.rating_seq, r.rating,
       LEAST(s.clip_high, GREATEST(s.clip_low,
           g.mu + COALESCE(u.bias, 0.0) + COALESCE(i.bias, 0.0)
           + CASE WHEN u.vector IS NULL OR i.vector IS NULL THEN 0.0 ELSE vec_dot(u.vector, i.vector) END
       )) AS prediction
FROM ratings_to_score AS r
CROSS JOIN score_params AS s
CROSS JOIN (SELECT MAX(bias) AS mu FROM model_state WHERE side = 'global') AS g
LEFT JOIN model_state AS u ON u.side = 'user' AND u.id = r.user_id
LEFT JOIN model_state AS i ON i.side = 'item' AND i.id = r.item_id
WHERE g.mu IS NOT NULL
