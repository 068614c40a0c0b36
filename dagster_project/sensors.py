"""Sensor ``new_rating_files``: one run per new, complete file in the landing folder, which
ingests it (rating_batches, a dynamic partition per file name) and applies it to every active
model (factor_versions; STREAMING_ALS_APPLY_WITH_INGEST=0 leaves that to the automation).

Exactly once does not rest on the cursor: a file whose content hash is already in the store's
ingestion ledger is never requested (so a reset cursor or a file dropped twice changes
nothing), run keys carry the content hash (the daemon skips a run key it has seen), and the
asset itself ingests through the ledger (a manual rerun is a no-op).

The cursor is JSON ``{"seen": {name: [size, mtime_ns]}, "handled": {name: [size, mtime_ns,
batch_id, what]}}`` and only holds files still in the landing folder:
``seen`` are files not yet complete on the last tick, ``handled`` files requested or found
already ingested (a duplicate stays in the landing folder and is reported once).
"""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from als_core.pipeline.ingest import file_batch_id
from dagster_project.assets import factor_versions, rating_batches, rating_files
from dagster_project.resources import LandingResource, StoreResource

SENSOR_INTERVAL = int(os.environ.get("STREAMING_ALS_SENSOR_INTERVAL", "5"))
# The file's run also applies it (factor_versions after rating_batches[file]): one run per
# file instead of two, which is most of the landing-to-version latency (a run costs a process
# start). factor_versions' automation condition skips updates made by runs that included it,
# and still applies batches ingested any other way (a manual partition run).
APPLY_WITH_INGEST = os.environ.get("STREAMING_ALS_APPLY_WITH_INGEST", "1").strip().lower() not in ("0", "false", "no")
RUN_SELECTION = [rating_batches.key, factor_versions.key] if APPLY_WITH_INGEST else [rating_batches.key]
TAG_FILE = "streaming_als/file"
TAG_BATCH = "streaming_als/batch_id"


def _load_cursor(text: str | None) -> tuple[dict, dict]:
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        data = {}
    return dict(data.get("seen") or {}), dict(data.get("handled") or {})


@dg.sensor(name="new_rating_files", target=[rating_batches, factor_versions] if APPLY_WITH_INGEST else rating_batches,
           minimum_interval_seconds=SENSOR_INTERVAL,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests one rating_batches run per new complete file in the landing folder "
                       f"(every {SENSOR_INTERVAL} s, STREAMING_ALS_SENSOR_INTERVAL).")
def new_rating_files(context: dg.SensorEvaluationContext, landing: LandingResource, store: StoreResource) -> dg.SensorResult:
    seen, handled = _load_cursor(context.cursor)
    warehouse = store.warehouse()
    known_partitions = set(context.instance.get_dynamic_partitions(rating_files.name))
    now_ns = time.time_ns()
    next_seen, next_handled, requests, new_partitions, waiting, duplicates = {}, {}, [], [], [], []
    for f in landing.scan():
        previous = handled.get(f.name)
        if previous and previous[:2] == f.signature:
            next_handled[f.name] = previous
            continue
        stable = seen.get(f.name) == f.signature
        old_enough = now_ns - f.mtime_ns >= landing.min_age_seconds * 1e9
        if not (stable or old_enough):
            next_seen[f.name] = f.signature
            waiting.append(f.name)
            continue
        try:
            batch_id = file_batch_id(f.path)
        except OSError as exc:  # vanished between scan and read: next tick
            context.log.warning(f"{f.name}: {exc}")
            continue
        known = warehouse.batch_record(batch_id)
        if known is not None:
            what = f"already ingested as batch {known['seq']} from {known['source']}"
            next_handled[f.name] = f.signature + [batch_id, what]
            duplicates.append(f.name)
            context.log.info(f"{f.name}: {what}; not requested (the file stays in the landing folder)")
            continue
        requests.append(dg.RunRequest(
            run_key=f"{f.name}:{batch_id[:16]}:{f.mtime_ns}", partition_key=f.name, asset_selection=RUN_SELECTION,
            tags={TAG_FILE: f.name, TAG_BATCH: batch_id}))
        if f.name not in known_partitions:
            new_partitions.append(f.name)
        next_handled[f.name] = f.signature + [batch_id, "requested"]
    cursor = json.dumps({"seen": next_seen, "handled": next_handled}, sort_keys=True)
    partition_requests = [rating_files.build_add_request(new_partitions)] if new_partitions else []
    if requests:
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=cursor)
    reason = (f"{len(waiting)} file(s) not complete yet" if waiting else "no new files") + (
        f"; {len(duplicates)} duplicate(s) of ingested batches" if duplicates else "")
    return dg.SensorResult(skip_reason=reason, cursor=cursor)
