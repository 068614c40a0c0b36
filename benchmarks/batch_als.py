"""Batch ALS benchmark: fit time and test accuracy on MovieLens.

Protocol (the project's accuracy protocol): ``random_split(ratings, 0.8, seed=42)`` (permute the
rows in file order, first 80 % train), fit `als_core.als.fit_als` with the default
hyperparameters except rank and iterations, score the test rows with predictions clipped to
[0.5, 5]. Fit time covers `fit_als` only (not reading or splitting); each configuration is
fitted once untimed (warm-up), then ``--runs`` times; min and median wall time are reported,
with the process CPU time of the fastest run (all threads) beside it.

Data: the shipped MovieLens latest-small, and MovieLens 100k when it is on this machine (its
licence forbids redistribution; see `als_core.datasets.ml100k_path`), else skipped with a note.

    .venv/bin/python benchmarks/batch_als.py            # table + benchmarks/results/batch_als.json
    .venv/bin/python benchmarks/batch_als.py --ranks 10 --runs 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from als_core.als import ALSParams, default_threads, fit_als
from als_core.metrics import mae, rmse
from als_core.splits import random_split

RESULTS = Path(__file__).resolve().parent / "results" / "batch_als.json"
TARGET_SECONDS = 0.5  # fit time goal for rank 50, 10 iterations on ML-100k
CLIP = (0.5, 5.0)


def load_datasets(ml100k: str | None):
    """[(name, table or None, note)]."""
    from als_core.datasets import load_shipped, ml100k_path
    from als_core.readers import read_ratings

    out = [("ml-latest-small", load_shipped(), "shipped")]
    path = Path(ml100k) if ml100k else ml100k_path()
    if path is not None and Path(path).is_file():
        out.append(("ml-100k", read_ratings(path).ratings, str(path)))
    else:
        out.append(("ml-100k", None, "skipped: u.data not found (set STREAMING_ALS_ML100K or --ml100k)"))
    return out


def bench_one(train, test, rank: int, iterations: int, runs: int, threads: int | None) -> dict:
    cols = [train[n].to_numpy() for n in ("user_id", "item_id", "rating")]
    params = ALSParams(rank=rank, iterations=iterations)
    fit_als(*cols, params, threads=threads)  # warm-up
    walls, cpus, model = [], [], None
    for _ in range(runs):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        model = fit_als(*cols, params, threads=threads)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    pred = model.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy(), clip=CLIP)
    truth = test["rating"].to_numpy()
    return {
        "rank": rank,
        "iterations": iterations,
        "lambda_": params.lambda_,
        "lambda_bias": params.lambda_bias,
        "n_train": train.num_rows,
        "n_test": test.num_rows,
        "fit_seconds_min": min(walls),
        "fit_seconds_median": statistics.median(walls),
        "fit_seconds_all": walls,
        "cpu_seconds_of_fastest": cpus[int(np.argmin(walls))],
        "test_rmse": rmse(truth, pred),
        "test_mae": mae(truth, pred),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="timed fits per configuration (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help=f"fit_als threads (default {default_threads()})")
    ap.add_argument("--ml100k", default=None, help="path of ML-100k u.data (default: als_core.datasets.ml100k_path())")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON output file")
    args = ap.parse_args(argv)

    rows, notes = [], []
    for name, table, note in load_datasets(args.ml100k):
        if table is None:
            notes.append(f"{name}: {note}")
            continue
        train, test = random_split(table, 0.8, seed=42)
        for rank in args.ranks:
            rows.append({"dataset": name, **bench_one(train, test, rank, args.iterations, args.runs, args.threads)})

    header = f"{'dataset':<16} {'rank':>4} {'train':>7} {'fit min s':>9} {'median s':>9} {'cpu s':>6} {'RMSE':>7} {'MAE':>7}  target"
    print(f"batch ALS, {args.iterations} iterations, random_split 0.8 seed 42, clipped [0.5, 5], "
          f"best/median of {args.runs} runs, threads={args.threads or default_threads()}")
    print(header)
    print("-" * len(header))
    for r in rows:
        target = ""
        if r["dataset"] == "ml-100k" and r["rank"] == 50:
            ok = r["fit_seconds_min"] <= TARGET_SECONDS
            target = f"fit <= {TARGET_SECONDS} s: {'met' if ok else 'NOT met'}"
            r["target"] = {"fit_seconds": TARGET_SECONDS, "met": ok}
        print(f"{r['dataset']:<16} {r['rank']:>4} {r['n_train']:>7} {r['fit_seconds_min']:>9.3f} "
              f"{r['fit_seconds_median']:>9.3f} {r['cpu_seconds_of_fastest']:>6.2f} {r['test_rmse']:>7.4f} "
              f"{r['test_mae']:>7.4f}  {target}")
    for n in notes:
        print("note:", n)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"load average at the end: {load[0]:.2f} (on {os.cpu_count()} CPUs; other work slows the timings)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "batch_als",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": "random_split(0.8, seed=42); default ALSParams except rank/iterations; predictions clipped to "
                    "[0.5, 5]; fit_als wall time, 1 warm-up + runs",
        "iterations": args.iterations,
        "runs": args.runs,
        "threads": args.threads or default_threads(),
        "machine": {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
                    "cpus": os.cpu_count(), "load_average": load},
        "results": rows,
        "notes": notes,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
