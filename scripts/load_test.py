#!/usr/bin/env python
"""Load test (issue 7.6): replay synthetic ratings through the two production paths and count
every rating in and out.

* ``cli``: ``streaming-als replay FILE --batch-size 5000`` (a subprocess: read the file, then
  per 5,000-rating batch ingest + apply to every active model, one model ``load`` here).
* ``landing``: the Dagster path, in process: 1,000 files dropped into a landing folder (write
  then rename), the ``new_rating_files`` sensor ticked with ``build_sensor_context``, one
  ``rating_batches`` run per requested file and a ``factor_versions`` run after every
  ``--apply-every`` files (what the automation sensor would request), all with
  ``dagster.materialize`` on one ephemeral instance. ``--landing-fraction F`` drops and
  processes only the first F of the 1,000 files; the full-run time is then an EXTRAPOLATION
  (measured seconds / F), labelled as such in the output.

The synthetic stream (``als_core.datasets.synthetic_ratings``, seeded) repeats (user, item)
pairs like a real stream, and ``--bad-fraction`` of the ratings are set outside the scale, so
both paths reject rows. Accounting, exact, per path:

    ratings in (data lines written)  ==  rows in `ratings`  +  rows in `rejected_ratings`

and the ledger's n_rows / n_rejected sums agree with the tables. Time is wall clock; peak
memory is ``resource.getrusage(...).ru_maxrss`` of the process that did the work (the CLI
subprocess; the landing child process). Exit status 1 if any count disagrees.

    .venv/bin/python scripts/load_test.py                      # 5,000,000 ratings, both paths
    .venv/bin/python scripts/load_test.py --ratings 200000 --mode cli --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("streaming-als"))
MODEL = "load"
BAD_RATING = 9.0  # outside the 0.5-5 scale: rejected by the reader with its line number


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generate(n: int, seed: int, bad_fraction: float, popularity: float):
    """The synthetic stream (n/10 users, n/50 items, Zipf-like popularity) with a seeded
    fraction of out-of-scale ratings."""
    import numpy as np
    import pyarrow as pa

    from als_core.datasets import synthetic_ratings

    table = synthetic_ratings(n, n_users=max(1000, n // 10), n_items=max(500, n // 50), seed=seed,
                              popularity_exponent=popularity)
    rng = np.random.default_rng(seed + 1)
    ratings = table["rating"].to_numpy().copy()
    ratings[rng.random(n) < bad_fraction] = BAD_RATING
    return table.set_column(2, "rating", pa.array(ratings))


def store_counts(warehouse_uri: str) -> dict:
    from deltalake import DeltaTable

    def rows(name: str) -> int:
        try:
            return DeltaTable(f"{warehouse_uri}/{name}").to_pyarrow_dataset().count_rows()
        except Exception:  # noqa: BLE001 - table never created
            return 0

    ledger = DeltaTable(f"{warehouse_uri}/batches").to_pyarrow_table(columns=["n_rows", "n_rejected"])
    from als_core.store.warehouse import Warehouse

    wh = Warehouse(warehouse_uri)
    return {"stored": rows("ratings"), "rejected": rows("rejected_ratings"), "batches": ledger.num_rows,
            "ledger_n_rows": int(sum(ledger["n_rows"].to_pylist())),
            "ledger_n_rejected": int(sum(ledger["n_rejected"].to_pylist())),
            "model_versions": wh.current_version(MODEL), "applied_seq": wh.applied_seq(MODEL),
            "factors_rows": rows("factors")}


def check(result: dict) -> list[str]:
    problems = []
    c = result["counts"]
    if result["ratings_in"] != c["stored"] + c["rejected"]:
        problems.append(f"{result['path']}: ratings in {result['ratings_in']} != stored {c['stored']} + rejected "
                        f"{c['rejected']} (difference {result['ratings_in'] - c['stored'] - c['rejected']})")
    if (c["ledger_n_rows"], c["ledger_n_rejected"]) != (c["stored"], c["rejected"]):
        problems.append(f"{result['path']}: ledger sums {c['ledger_n_rows']}/{c['ledger_n_rejected']} != tables "
                        f"{c['stored']}/{c['rejected']}")
    if c["applied_seq"] != c["batches"] or c["model_versions"] != c["batches"]:
        problems.append(f"{result['path']}: model {MODEL!r} at version {c['model_versions']} (applied batch "
                        f"{c['applied_seq']}) but the ledger has {c['batches']} batches")
    return problems


# ------------------------------------------------------------------------------------ CLI path
def run_cli(args, table, workdir: Path) -> dict:
    from als_core.datasets import write_ratings

    data = write_ratings(table, workdir / "synthetic.csv")
    warehouse = workdir / "wh-cli"
    subprocess.run([CLI, "models", "create", MODEL, "-w", str(warehouse)], check=True, capture_output=True)
    log(f"cli: streaming-als replay {data.name} --batch-size {args.batch_size} ({table.num_rows:,} ratings)")
    t0 = time.perf_counter()
    with open(workdir / "replay.log", "w") as out:
        proc = subprocess.run([CLI, "replay", str(data), "--batch-size", str(args.batch_size), "-w", str(warehouse)],
                              stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"replay failed ({proc.returncode}); see {workdir / 'replay.log'}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child: the replay
    result = {"path": "cli replay", "ratings_in": table.num_rows, "batch_size": args.batch_size,
              "seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
              "counts": store_counts(str(warehouse))}
    result["ratings_per_second"] = round(table.num_rows / seconds)
    return result


# ------------------------------------------------------------------------------------ landing path
def drop_landing_files(table, landing: Path, n_files: int, n_used: int) -> int:
    """Write the first n_used of n_files equal slices as landing files (hidden name, then
    rename, as writers must). Returns the data lines written."""
    from als_core.datasets import write_ratings

    landing.mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // n_files)
    lines = 0
    for k in range(n_used):
        chunk = table.slice(k * size, size)
        tmp = write_ratings(chunk, landing / f".tmp-load-{k:05d}.csv")
        os.replace(tmp, landing / f"load-{k:05d}.csv")
        lines += chunk.num_rows
    return lines


def landing_stage(args) -> dict:
    """Runs in a child process: sensor ticks + materialize, like the daemon would."""
    import dagster as dg

    from als_core.pipeline.models import create_model
    from als_core.store.warehouse import Warehouse
    from dagster_project.assets import factor_versions, rating_batches
    from dagster_project.resources import EngineResource, LandingResource, StoreResource
    from dagster_project.sensors import new_rating_files

    Warehouse(args.warehouse).ensure_tables()
    create_model(Warehouse(args.warehouse), MODEL)
    resources = {"store": StoreResource(warehouse_uri=args.warehouse),
                 "landing": LandingResource(path=args.landing, min_age_seconds=0),
                 "engine": EngineResource(name="duckdb")}
    ingested = applied = ticks = failed = 0
    cursor = None
    t0 = time.perf_counter()
    with dg.instance_for_test() as instance:
        while True:
            context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
            result = new_rating_files(context)
            ticks += 1
            cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            if not result.run_requests:
                break
            for request in result.run_requests:
                run = dg.materialize([rating_batches], partition_key=request.partition_key, instance=instance,
                                     resources=resources, tags=request.tags, raise_on_error=False)
                ingested += 1
                failed += not run.success
                if ingested % args.apply_every == 0:
                    dg.materialize([factor_versions], instance=instance, resources=resources)
                    applied += 1
                if ingested % 50 == 0:
                    log(f"landing: {ingested} files ingested, {applied} factor_versions runs, "
                        f"{time.perf_counter() - t0:.0f} s")
        dg.materialize([factor_versions], instance=instance, resources=resources)
        applied += 1
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "files": ingested, "failed_runs": failed, "sensor_ticks": ticks,
            "factor_versions_runs": applied,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_landing(args, table, workdir: Path) -> dict:
    n_used = max(1, round(args.landing_files * args.landing_fraction))
    landing, warehouse = workdir / "landing", workdir / "wh-landing"
    lines = drop_landing_files(table, landing, args.landing_files, n_used)
    log(f"landing: {n_used} of {args.landing_files} files ({lines:,} ratings) in {landing}; sensor + materialize")
    proc = subprocess.run([sys.executable, __file__, "--stage", "landing", "--landing", str(landing),
                           "--warehouse", str(warehouse), "--apply-every", str(args.apply_every)],
                          capture_output=True, text=True, cwd=str(REPO))
    sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
    if proc.returncode:
        raise SystemExit(f"landing stage failed ({proc.returncode})")
    stage = json.loads(proc.stdout.strip().splitlines()[-1])
    left = sorted(p.name for p in landing.iterdir() if p.is_file())
    result = {"path": "landing + sensor (Dagster)", "ratings_in": lines, "files_total": args.landing_files,
              "files_measured": n_used, **stage, "files_left_in_landing": len(left),
              "counts": store_counts(str(warehouse))}
    result["ratings_per_second"] = round(lines / stage["seconds"])
    if n_used < args.landing_files:
        result["EXTRAPOLATED_seconds_for_all_files"] = round(stage["seconds"] * args.landing_files / n_used)
    return result


def dagster_available() -> bool:
    try:
        from dagster_project.assets import factor_versions, rating_batches  # noqa: F401
        from dagster_project.sensors import new_rating_files  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=5_000_000)
    parser.add_argument("--batch-size", type=int, default=5000, help="CLI replay batch size")
    parser.add_argument("--mode", choices=["cli", "landing", "both"], default="both")
    parser.add_argument("--landing-files", type=int, default=1000)
    parser.add_argument("--landing-fraction", type=float, default=1.0,
                        help="process only this fraction of the landing files; the full time is extrapolated")
    parser.add_argument("--apply-every", type=int, default=10, help="factor_versions run after every N ingested files")
    parser.add_argument("--bad-fraction", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--popularity", type=float, default=0.8,
                        help="Zipf exponent of user/item popularity (repeated (user, item) pairs: ~6%% at 5M)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage == "landing":
        print(json.dumps(landing_stage(args)))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streaming-als-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"generating {args.ratings:,} synthetic ratings (seed {args.seed}, {args.bad_fraction:.2%} out of scale) "
        f"in {workdir}")
    table = generate(args.ratings, args.seed, args.bad_fraction, args.popularity)
    results, problems = [], []
    modes = ["cli", "landing"] if args.mode == "both" else [args.mode]
    for mode in modes:
        if mode == "landing" and not dagster_available():
            log("landing: dagster_project (sensor + assets) not importable: skipped")
            continue
        result = run_cli(args, table, workdir) if mode == "cli" else run_landing(args, table, workdir)
        result["problems"] = check(result)
        problems += result["problems"]
        results.append(result)
        log(json.dumps(result))
    summary = {"ratings": args.ratings, "seed": args.seed, "bad_fraction": args.bad_fraction,
               "popularity_exponent": args.popularity,
               "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
