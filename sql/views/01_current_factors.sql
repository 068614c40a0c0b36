-- current_factors(model, version): a model's state as of a version (default: latest): for
-- each (side, id) the row with the largest version <= version; tombstones dropped.
-- Reads the latest factors table, which holds every version since the model's last
-- compaction: an older version is refused here (its rows were merged away) and is read
-- from Python (als_core.store.versions.model_state), which time-travels.
CREATE OR REPLACE MACRO current_factors(model, as_of := 9223372036854775807) AS TABLE
SELECT side, id, n, bias, vector, version
FROM factors
WHERE model_id = model AND version <= as_of
  AND CASE WHEN as_of < (SELECT coalesce(max(compacted_version), 0) FROM compactions c WHERE c.model_id = model)
           THEN error('current_factors: version ' || as_of || ' of model ' || model
                      || ' is older than its last compaction (version '
                      || (SELECT max(compacted_version) FROM compactions c WHERE c.model_id = model)
                      || '), which merged its rows away; read it with als_core.store.versions.model_state'
                      || ' (Delta time travel)')
           ELSE true END
QUALIFY ROW_NUMBER() OVER (PARTITION BY side, id ORDER BY version DESC) = 1 AND bias IS NOT NULL;
