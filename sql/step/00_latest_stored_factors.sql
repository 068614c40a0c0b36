-- latest_stored_factors: the latest stored row of every key: the row with the largest
-- version per (side, id), tombstones included (select_batch_factors drops them next).
-- A reader that returns only each key's latest row already (the DuckDB engine's file cache,
-- when its lookup found one row per key) passes them as latest_factors and skips this file:
-- on a 100,000-rating step this join and GROUP BY cost 10-15 ms for nothing.
-- (A join with the latest version per key: cheaper than a window, which would carry every
-- row's vector through a sort or an arg_max.)
SELECT s.side, s.id, s.version, s.n, s.bias, s.vector
FROM stored_factors AS s
JOIN (
    SELECT side, id, MAX(version) AS version
    FROM stored_factors
    GROUP BY side, id
) AS latest
    ON s.side = latest.side AND s.id = latest.id AND s.version = latest.version
