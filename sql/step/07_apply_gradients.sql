-- apply_gradients: the new rows of this factor version: every key of the batch with its new
-- vector, bias and count, plus the global row (side 'global', id 0: μ in bias, ratings seen in n).
-- Vector: old + summed step (sum aggregation) or + averaged step (mean), stored as FLOAT:
--   U + s (γ Σ e P_i - γ λ n_batch U) = (1 - s γ λ n_batch) U + s γ Σ e P_i,   s = 1 or 1 / n_batch.
-- Bias rules: 'sgd' = γ (Σe - λ_b n_batch b) (divided by n_batch with mean aggregation);
-- 'running_mean' = Σe / (n_before + n_batch + λ_b), the closed-form damped running mean.
-- A component outside FLOAT's range becomes NULL or infinite (vec_axpby_float; instead of a
-- cast error) so the caller can refuse the whole step with a clear message before anything
-- is committed.
SELECT p.model_id, p.new_version AS version, a.side, a.id,
       f.n_before + a.n_batch AS n,
       f.bias + CASE
           WHEN p.bias_update = 'running_mean' THEN a.err_sum / (f.n_before + a.n_batch + p.lambda_bias)
           ELSE a.share * p.gamma * (a.err_sum - p.lambda_bias * a.n_batch * f.bias)
       END AS bias,
       vec_axpby_float(1.0 - a.share * p.gamma * p.lambda_ * a.n_batch, f.vector, a.share * p.gamma,
                       a.err_vector_sum) AS vector,
       p.batch_seq
FROM (
    SELECT g.*, CASE WHEN q.aggregation = 'mean' THEN 1.0 / g.n_batch ELSE 1.0 END AS share
    FROM aggregate_gradients AS g
    CROSS JOIN step_params AS q
) AS a
JOIN key_factors AS f ON f.side = a.side AND f.id = a.id
CROSS JOIN step_params AS p
UNION ALL
SELECT p.model_id, p.new_version AS version, 'global' AS side, CAST(0 AS BIGINT) AS id,
       g.n, g.mu AS bias, CAST(NULL AS FLOAT[]) AS vector, p.batch_seq
FROM global_state AS g
CROSS JOIN step_params AS p
