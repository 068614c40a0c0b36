#!/usr/bin/env python
"""Measure the seconds from a rating file landing to its factor version being queryable.

Starts ``dagster dev -w workspace.yaml`` (scripts/devserver.py: 127.0.0.1, free port,
DAGSTER_HOME, warehouse and landing folder in a temporary directory, the instance settings
of dagster_project/dagster.yaml) with the sensor running every 5 s, waits until the grid's
models exist, then drops micro-batch files of the shipped MovieLens sample one at a time
(write-then-rename, `als_core.pipeline.replay.drop_file`). For each file it polls the store
through `als_core.sql_session.sql_session`, the DuckDB session behind ``streaming-als sql``,
until every live model has a version for that batch:

    SELECT count(DISTINCT v.model_id) FROM model_versions v JOIN batches b ON v.batch_seq = b.seq
    WHERE b.batch_id = '<content hash of the file>'

and records when the first and when the last model had it. Before the next file it waits
until no run is queued or running, so each figure is the latency of a file arriving at an
idle pipeline. At the end the same query runs once through the real ``streaming-als sql``
command as a cross-check, and the Dagster run timestamps give a breakdown (see `breakdown`).
``--no-apply-with-ingest`` measures the variant where the automation applies the batch.

    .venv/bin/python scripts/measure_latency.py [--files 5] [--batch-size 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devserver import DagsterDev  # noqa: E402

from als_core.datasets import load_shipped  # noqa: E402
from als_core.pipeline.ingest import file_batch_id  # noqa: E402
from als_core.pipeline.replay import drop_file  # noqa: E402
from als_core.sql_session import sql_session  # noqa: E402
from als_core.store.warehouse import Warehouse  # noqa: E402

RUNS_QUERY = """
query {
  runsOrError(limit: 200) {
    __typename
    ... on Runs {
      results { runId status creationTime startTime endTime tags { key value } assetSelection { path } }
    }
  }
}
"""
ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def versions_of_batch(warehouse: Warehouse, batch_id: str) -> int:
    with sql_session(warehouse) as con:
        return con.execute(
            "SELECT count(DISTINCT v.model_id) FROM model_versions v JOIN batches b ON v.batch_seq = b.seq "
            "WHERE b.batch_id = ?", [batch_id]).fetchone()[0]


def live_models(warehouse: Warehouse) -> int:
    with sql_session(warehouse) as con:
        return con.execute("SELECT count(*) FROM models WHERE status IN ('active', 'champion')").fetchone()[0]


def wait_for(predicate, timeout: float, poll: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)  # polling interval of a bounded wait
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def runs(dev: DagsterDev) -> list[dict]:
    data = dev.graphql(RUNS_QUERY)["runsOrError"]
    return data.get("results", [])


def breakdown(all_runs: list[dict], batch_id: str, landed: float, queryable: float) -> dict:
    """Phases of one file's latency from the run timestamps (epoch seconds): detection (landing
    to the run's creation by the sensor), launch (creation to the run worker starting: queue
    and process start), and the run itself up to the moment every model had the version. When
    the file's run did not apply it (STREAMING_ALS_APPLY_WITH_INGEST=0), also the wait for the
    automation and the factor_versions run."""
    ingest = next((r for r in all_runs if any(t["key"] == "streaming_als/batch_id" and t["value"] == batch_id
                                                for t in r["tags"])), None)
    if ingest is None or ingest.get("startTime") is None:
        return {}
    out = {"detect_s": ingest["creationTime"] - landed, "launch_s": ingest["startTime"] - ingest["creationTime"]}
    selection = {"/".join(a["path"]) for a in ingest["assetSelection"] or []}
    if "factor_versions" in selection:
        out["run_to_queryable_s"] = queryable - ingest["startTime"]
    elif ingest.get("endTime") is not None:
        out["ingest_run_s"] = ingest["endTime"] - ingest["startTime"]
        factor = [r for r in all_runs if any(a["path"] == ["factor_versions"] for a in (r["assetSelection"] or []))
                  and ingest["endTime"] - 1e-3 <= r["creationTime"] <= queryable]
        if factor:
            f = min(factor, key=lambda r: r["creationTime"])
            out["automation_wait_s"] = f["creationTime"] - ingest["endTime"]
            out["factor_run_to_queryable_s"] = queryable - f["creationTime"]
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180.0, help="per file, seconds")
    parser.add_argument("--grid", default="", help="STREAMING_ALS_GRID JSON (default: the built-in grid)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-apply-with-ingest", action="store_true",
                        help="STREAMING_ALS_APPLY_WITH_INGEST=0: the file's run only ingests")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="streaming-als-latency-"))
    warehouse_dir, landing = workdir / "warehouse", workdir / "landing"
    env = {"STREAMING_ALS_WAREHOUSE": str(warehouse_dir), "STREAMING_ALS_LANDING": str(landing),
           "STREAMING_ALS_SENSOR_INTERVAL": "5"}
    if args.grid:
        env["STREAMING_ALS_GRID"] = args.grid
    if args.no_apply_with_ingest:
        env["STREAMING_ALS_APPLY_WITH_INGEST"] = "0"
    ratings = load_shipped()
    results = {"sensor_interval_s": 5, "batch_size": args.batch_size, "apply_with_ingest": not args.no_apply_with_ingest,
               "load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(), "files": []}
    dev = DagsterDev(workdir, env=env)
    try:
        dev.start()
        dev.wait_ready(timeout=180)
        warehouse = Warehouse(str(warehouse_dir))
        n_models = wait_for(lambda: live_models(warehouse), 180, 0.5, "the hyperparameter_grid models")
        wait_for(lambda: not any(r["status"] in ACTIVE for r in runs(dev)), 180, 0.5, "an idle pipeline")
        results["models"] = n_models
        for k in range(1, args.files + 1):
            chunk = ratings.slice((k - 1) * args.batch_size, args.batch_size)
            path = drop_file(chunk, landing, f"latency-batch-{k:04d}.csv")
            landed = time.time()
            batch_id = file_batch_id(path)
            first = wait_for(lambda: versions_of_batch(warehouse, batch_id) >= 1 and time.time(),
                             args.timeout, 0.25, f"a version of {path.name}")
            last = wait_for(lambda: versions_of_batch(warehouse, batch_id) >= n_models and time.time(),
                            args.timeout, 0.25, f"{n_models} versions of {path.name}")
            row = {"file": path.name, "first_model_s": round(first - landed, 2), "all_models_s": round(last - landed, 2)}
            print(json.dumps(row), flush=True)
            wait_for(lambda: not any(r["status"] in ACTIVE for r in runs(dev)), 180, 0.5, "an idle pipeline")
            row.update(breakdown(runs(dev), batch_id, landed, last))
            results["files"].append(row)
        cli = Path(sys.executable).with_name("streaming-als")
        check = subprocess.run(
            [str(cli), "sql", "-w", str(warehouse_dir),
             "SELECT count(*) AS versions, count(DISTINCT model_id) AS models, max(batch_seq) AS last_batch "
             "FROM model_versions"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "COLUMNS": "200"})
        results["cli_check"] = check.stdout.strip()
    finally:
        dev.stop()
    results["load_average_at_end"] = os.getloadavg()
    firsts = [f["first_model_s"] for f in results["files"]]
    alls = [f["all_models_s"] for f in results["files"]]
    if alls:
        results["summary"] = {"first_model_median_s": statistics.median(firsts), "all_models_median_s": statistics.median(alls),
                              "all_models_max_s": max(alls), "all_models_min_s": min(alls)}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
