-- init_unseen_factors: unseen keys get bias 0, count 0 and the deterministic vector of
-- (model seed, side, id) (vec_init: the same integer hash as als_core/init.py), rounded to
-- FLOAT as the store would keep it, so every engine starts from identical numbers.
-- unseen is kept: the prequential score (rating_errors) applies the cold-start rule to them.
-- (The initial vector is made in the inner query: vec_load reads each component of its
-- argument, and vec_init written inside it would run once per component.)
SELECT k.side, k.id, k.unseen, k.n_before, k.bias,
       CASE WHEN k.unseen THEN vec_load(k.init_vector) ELSE k.vector END AS vector
FROM (
    SELECT j.side, j.id, j.unseen, j.vector,
           CASE WHEN j.unseen THEN CAST(0 AS BIGINT) ELSE j.n END AS n_before,
           CASE WHEN j.unseen THEN CAST(0.0 AS DOUBLE) ELSE j.bias END AS bias,
           CASE WHEN j.unseen
                THEN CAST(vec_init(p.seed, CASE WHEN j.side = 'user' THEN 1 ELSE 2 END, j.id, p.rank, p.init_scale) AS FLOAT[])
                END AS init_vector
    FROM joined_factors AS j
    CROSS JOIN step_params AS p
    WHERE j.in_batch
) AS k
