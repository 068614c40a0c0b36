-- current_factors(model, version): a model's state as of a version (default: latest): for
-- each (side, id) the row with the largest version <= version; tombstones dropped.
-- Reads the latest factors table, which holds every version since the model's last
-- compaction: an older version is refused here (its rows were merged away) and is read
-- from Python (als_core.store.versions.model_state), which time-travels.
CREATE OR REPLACE MACRO current_factors(model, as_of := 9223372036854775807) AS TABLE
WITH last_compaction AS (
    SELECT coalesce(max(compacted_version), 0) AS version FROM compactions c WHERE c.model_id = model
)
SELECT f.side, f.id, f.n, f.bias, f.vector, f.version
FROM factors AS f, last_compaction AS lc
WHERE f.model_id = model AND f.version <= as_of
  AND CASE WHEN as_of < lc.version
           THEN error('current_factors: version ' || as_of || ' of model ' || model
                      || ' is older than its last compaction (version ' || lc.version
                      || '), which merged its rows away; read it with als_core.store.versions.model_state'
                      || ' (Delta time travel)')
           ELSE true END
QUALIFY ROW_NUMBER() OVER (PARTITION BY f.side, f.id ORDER BY f.version DESC) = 1 AND f.bias IS NOT NULL;
