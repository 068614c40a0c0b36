-- current_factors(model, version): a model's state as of a version (default: latest): for
-- each (side, id) the row with the largest version <= version; tombstones dropped.
-- Reads the latest factors table: versions older than the model's last compaction are
-- reachable from Python (als_core.store.versions.model_state), which time-travels.
CREATE OR REPLACE MACRO current_factors(model, as_of := 9223372036854775807) AS TABLE
SELECT side, id, n, bias, vector, version
FROM factors
WHERE model_id = model AND version <= as_of
QUALIFY ROW_NUMBER() OVER (PARTITION BY side, id ORDER BY version DESC) = 1 AND bias IS NOT NULL;
