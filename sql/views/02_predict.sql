-- predict(model, user, item): μ + b_u + b_i + U_u·P_i with the cold-start rule (an unknown
-- user or item contributes nothing), clipped to the half-star scale [0.5, 5]. NULL when the
-- model has no version yet (no global row): CASE keeps GREATEST from turning NULL into 0.5.
CREATE OR REPLACE MACRO predict(model, user_key, item_key) AS (
    SELECT CASE WHEN MAX(CASE WHEN side = 'global' THEN bias END) IS NULL THEN NULL ELSE LEAST(5.0, GREATEST(0.5,
        MAX(CASE WHEN side = 'global' THEN bias END)
        + COALESCE(MAX(CASE WHEN side = 'user' AND id = user_key THEN bias END), 0.0)
        + COALESCE(MAX(CASE WHEN side = 'item' AND id = item_key THEN bias END), 0.0)
        + COALESCE(list_dot_product(
              CAST(ANY_VALUE(CASE WHEN side = 'user' AND id = user_key THEN vector END) AS DOUBLE[]),
              CAST(ANY_VALUE(CASE WHEN side = 'item' AND id = item_key THEN vector END) AS DOUBLE[])), 0.0))) END
    FROM current_factors(model)
    WHERE side = 'global' OR (side = 'user' AND id = user_key) OR (side = 'item' AND id = item_key)
);
