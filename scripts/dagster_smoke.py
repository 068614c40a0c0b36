#!/usr/bin/env python
"""Smoke test of the Dagster code location under a real ``dagster dev -w workspace.yaml``.

Starts it on 127.0.0.1 with a free port and DAGSTER_HOME, warehouse and landing folder in a
temporary directory, waits (bounded) until GraphQL answers and the code location is loaded,
checks that every asset and the sensors and schedules are served, then stops it (SIGTERM to
its process group). Exit status 0 on success; prints a JSON summary.

    .venv/bin/python scripts/dagster_smoke.py [--timeout 120] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devserver import DagsterDev  # noqa: E402

EXPECTED_ASSETS = {"rating_batches", "factor_versions", "model_evaluations", "hyperparameter_grid", "grid_pruning",
                   "batch_als_baseline", "rmse_curve", "factor_compaction"}
EXPECTED_SENSORS = {"new_rating_files", "streaming_als_automation"}
EXPECTED_SCHEDULES = {"factor_compaction_schedule", "batch_als_baseline_schedule"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="streaming-als-smoke-"))
    env = {"STREAMING_ALS_WAREHOUSE": str(workdir / "warehouse"), "STREAMING_ALS_LANDING": str(workdir / "landing")}
    t0 = time.monotonic()
    dev = DagsterDev(workdir, env=env)
    summary = {"url": dev.url, "problems": []}
    problems = summary["problems"]
    try:
        dev.start()
        dev.wait_ready(timeout=args.timeout)
        summary["ready_seconds"] = round(time.monotonic() - t0, 1)
        found = dev.definitions()
        summary.update(found)
        for kind, expected in (("assets", EXPECTED_ASSETS), ("sensors", EXPECTED_SENSORS),
                               ("schedules", EXPECTED_SCHEDULES)):
            missing = expected - set(found[kind])
            if missing:
                problems.append(f"missing {kind}: {sorted(missing)}")
        if found["sensors"].get("new_rating_files") != "RUNNING":
            problems.append(f"sensor new_rating_files is {found['sensors'].get('new_rating_files')}, not RUNNING")
    except (RuntimeError, TimeoutError) as exc:
        problems.append(str(exc))
    finally:
        t1 = time.monotonic()
        summary["exit_code"] = dev.stop()
        summary["stop_seconds"] = round(time.monotonic() - t1, 1)
    print(json.dumps(summary, indent=2))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
