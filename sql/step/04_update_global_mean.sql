-- update_global_mean: μ is the running mean of every rating seen, this batch included.
-- The aggregate subqueries return exactly one row even for a model's first batch.
-- mu_before: μ before the batch, for the prequential score (NULL before the first batch).
SELECT COALESCE(g.n, 0) + b.n_batch AS n, g.mu AS mu_before,
       (COALESCE(g.mu, 0.0) * COALESCE(g.n, 0) + b.sum_rating) / (COALESCE(g.n, 0) + b.n_batch) AS mu
FROM (SELECT COUNT(*) AS n_batch, exact_sum(rating) AS sum_rating FROM batch_ratings) AS b
CROSS JOIN (SELECT MAX(n) AS n, MAX(bias) AS mu FROM batch_factors WHERE side = 'global') AS g
