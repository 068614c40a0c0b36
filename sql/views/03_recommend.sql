-- recommend(model, user, top_n): the top_n items with the highest predicted rating that the user has
-- not rated. For an unknown (cold-start) user the score is μ + b_i: the best items by bias.
CREATE OR REPLACE MACRO recommend(model, user_key, top_n := 10) AS TABLE
WITH state AS (SELECT * FROM current_factors(model)),
     mu AS (SELECT bias AS mu FROM state WHERE side = 'global'),
     usr AS (SELECT bias, CAST(vector AS DOUBLE[]) AS vector FROM state WHERE side = 'user' AND id = user_key),
     rated AS (SELECT DISTINCT item_id FROM ratings WHERE user_id = user_key)
SELECT i.id AS item_id,
       mu.mu + i.bias + COALESCE(usr.bias, 0.0)
           + COALESCE(list_dot_product(usr.vector, CAST(i.vector AS DOUBLE[])), 0.0) AS score,
       i.n AS item_ratings,
       usr.vector IS NULL AS cold_start
FROM state AS i
CROSS JOIN mu
LEFT JOIN usr ON TRUE
WHERE i.side = 'item' AND i.id NOT IN (SELECT item_id FROM rated)
ORDER BY score DESC, i.id
LIMIT top_n;
