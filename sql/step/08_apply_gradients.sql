-- apply_gradients: the new rows of this factor version: every key of the batch with its new
-- vector (old + summed or averaged step, stored as FLOAT), bias and count, plus the global row
-- (side 'global', id 0: μ in bias, ratings seen in n).
-- Bias rules: 'sgd' = γ (Σe - λ_b n_batch b) (divided by n_batch with mean aggregation);
-- 'running_mean' = Σe / (n_before + n_batch + λ_b), the closed-form damped running mean.
-- A component outside FLOAT's range becomes NaN (instead of a cast error) so the caller can
-- refuse the whole step with a clear message before anything is committed.
WITH components_double AS (
    SELECT a.side, a.id, a.k, a.n_batch, a.err_sum, f.n_before, f.bias,
           vec_get(f.vector, a.k)
               + CASE WHEN p.aggregation = 'mean' THEN a.grad_sum / a.n_batch ELSE a.grad_sum END AS component
    FROM aggregate_gradients AS a
    JOIN key_factors AS f ON f.side = a.side AND f.id = a.id
    CROSS JOIN step_params AS p
),
components_updated AS (
    SELECT side, id, k, n_batch, err_sum, n_before, bias,
           CAST(CASE WHEN ABS(component) <= 3.4028234663852886e38 THEN component ELSE CAST('NaN' AS DOUBLE) END
                AS FLOAT) AS component
    FROM components_double
),
keys_updated AS (
    SELECT side, id, MAX(n_batch) AS n_batch, MAX(err_sum) AS err_sum, MAX(n_before) AS n_before,
           MAX(bias) AS bias, vec_collect(component, k) AS vector
    FROM components_updated
    GROUP BY side, id
)
SELECT p.model_id, p.new_version AS version, u.side, u.id,
       u.n_before + u.n_batch AS n,
       u.bias + CASE
           WHEN p.bias_update = 'running_mean' THEN u.err_sum / (u.n_before + u.n_batch + p.lambda_bias)
           WHEN p.aggregation = 'mean' THEN p.gamma * (u.err_sum - p.lambda_bias * u.n_batch * u.bias) / u.n_batch
           ELSE p.gamma * (u.err_sum - p.lambda_bias * u.n_batch * u.bias)
       END AS bias,
       u.vector,
       p.batch_seq
FROM keys_updated AS u
CROSS JOIN step_params AS p
UNION ALL
SELECT p.model_id, p.new_version AS version, 'global' AS side, CAST(0 AS BIGINT) AS id,
       g.n, g.mu AS bias, CAST(NULL AS FLOAT[]) AS vector, p.batch_seq
FROM global_state AS g
CROSS JOIN step_params AS p
