"""Engine benchmark: the streaming replay on DuckDB vs Spark, and batch ALS numpy vs Spark MLlib.

Replay: the first ``--batches`` batches (default 30) of ``--batch-size`` ratings (1,000) of
the shipped MovieLens latest-small set, in file order, ingested into one fresh warehouse per
engine (no holdout), then applied to the default model (`DEFAULT_PARAMS`) one batch at a
time with `als_core.pipeline.apply.apply_batch`: the timed unit is the whole step of one
batch (applied-check, batch read, factor read, the sql/ step and prequential scores, checks,
Delta commit with its app transaction). Reported per engine: engine start time, first batch
(JIT / code generation warm-up), p50 / p95 / mean of the later batches and throughput
(ratings / second over the later batches), plus the max abs difference between the two
engines' final states (biases, vectors, μ).

Batch ALS: `als_core.als.fit_als` (numpy, `ALSParams` defaults: rank 10, 10 iterations,
λ = 15 per key, λ_b = 5 on the biases) vs `train_als_spark` (MLlib ALS, rank 10, maxIter 10,
regParam ``--mllib-reg-param`` = 0.1, MLlib's default, fitted to the centred ratings, no
biases). The penalties are not comparable numbers: MLlib multiplies regParam by each key's
rating count (ALS-WR), numpy's λ is per key; each side uses its own tuned value (MLlib on the
demo split: regParam 0.05 / 0.1 / 0.2 -> RMSE 0.925 / 0.887 / 0.887). Fit time excludes data
loading and splitting; one untimed warm-up fit each, then ``--runs`` timed fits (min and
median). RMSE / MAE on the demo split (``random_split(table, 0.8, seed=42)``), predictions
clipped to [0.5, 5], unknown ids by the cold-start rule. Data: the shipped set, and MovieLens
100k from ``/work/shared/data/ml-100k/u.data`` (or ``--ml100k``) when present, else skipped.

The machine may be shared: the load average is recorded before and after each part.

    .venv/bin/python benchmarks/engines.py                 # table + benchmarks/results/engines.json
    .venv/bin/python benchmarks/engines.py --batches 10 --runs 1 --spark-master local[2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from als_core.als import ALSParams, fit_als
from als_core.datasets import load_shipped
from als_core.engines.base import ModelSpec
from als_core.metrics import mae, rmse
from als_core.pipeline.apply import apply_batch
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.readers import read_ratings
from als_core.splits import random_split
from als_core.store.versions import model_state
from als_core.store.warehouse import Warehouse

RESULTS = Path(__file__).resolve().parent / "results" / "engines.json"
ML100K = Path("/work/shared/data/ml-100k/u.data")
CLIP = (0.5, 5.0)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


# ---------------------------------------------------------------------- replay


def make_engine(name: str, master: str):
    t0 = time.perf_counter()
    if name == "duckdb":
        from als_core.engines.duckdb_engine import DuckDBEngine

        engine = DuckDBEngine()
    else:
        from als_core.engines.spark_engine import SparkEngine

        engine = SparkEngine(master=master, conf={"spark.ui.enabled": "false"})
        engine.spark.sparkContext.setLogLevel("ERROR")
    return engine, time.perf_counter() - t0


def replay(name: str, engine, data: pa.Table, n_batches: int, batch_size: int, root: Path) -> dict:
    wh = Warehouse(str(root / name))
    wh.ensure_tables()
    for b in range(n_batches):
        ingest_table(wh, data.slice(b * batch_size, batch_size), source=f"batch-{b + 1:04d}", holdout_fraction=0.0)
    create_model(wh, "bench", DEFAULT_PARAMS)
    spec = ModelSpec.from_record(wh.model_record("bench"))
    latencies, n_ratings, load_before = [], [], load()
    for batch in wh.ledger().to_pylist():
        t0 = time.perf_counter()
        done = apply_batch(wh, engine, spec, batch, CLIP)
        latencies.append(time.perf_counter() - t0)
        n_ratings.append(done.n_ratings)
    later, later_ratings = latencies[1:], sum(n_ratings[1:])
    return {
        "engine": name, "batches": len(latencies), "batch_size": batch_size, "latencies_s": [round(x, 4) for x in latencies],
        "first_batch_s": round(latencies[0], 3),
        "p50_s": round(percentile(later, 50), 4), "p95_s": round(percentile(later, 95), 4),
        "mean_s": round(statistics.fmean(later), 4),
        "throughput_ratings_per_s": round(later_ratings / sum(later), 1),
        "total_s": round(sum(latencies), 2), "load_before": load_before, "load_after": load(),
        "_warehouse": wh,
    }


def state_diff(a: Warehouse, b: Warehouse) -> float:
    def rows(wh):
        return {(r["side"], r["id"]): r for r in model_state(wh, "bench").to_pylist()}

    ra, rb = rows(a), rows(b)
    if ra.keys() != rb.keys():
        return float("inf")
    worst = 0.0
    for key, r in ra.items():
        worst = max(worst, abs(r["bias"] - rb[key]["bias"]))
        if r["vector"] is not None:
            worst = max(worst, float(np.abs(np.subtract(r["vector"], rb[key]["vector"])).max()))
    return worst


# ---------------------------------------------------------------------- batch ALS


def datasets(ml100k: Path) -> list[tuple[str, pa.Table | None, str]]:
    out = [("ml-latest-small (demo split)", load_shipped(), "shipped")]
    if ml100k.is_file():
        out.append(("ml-100k", read_ratings(ml100k).ratings, str(ml100k)))
    else:
        out.append(("ml-100k", None, f"skipped: {ml100k} not found"))
    return out


def columns(table: pa.Table):
    return [table[n].to_numpy(zero_copy_only=False) for n in ("user_id", "item_id", "rating")]


def score(model, test: pa.Table) -> tuple[float, float]:
    users, items, y = columns(test)
    p = model.predict(users, items, clip=CLIP)
    return rmse(y, p), mae(y, p)


def time_fits(fit, runs: int):
    fit()  # warm-up (JIT, thread pools, Spark code generation)
    walls, model = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        model = fit()
        walls.append(time.perf_counter() - t0)
    return model, walls


def bench_als(name: str, table: pa.Table, spark, runs: int, mllib_reg_param: float = 0.1) -> list[dict]:
    from als_core.engines.spark_engine import train_als_spark

    train, test = random_split(table, 0.8, seed=42)
    params = ALSParams()  # rank 10, 10 iterations, the tuned penalties
    out = []
    fits = [("numpy fit_als", f"λ={params.lambda_:g}, λ_b={params.lambda_bias:g}",
             lambda: fit_als(*columns(train), params))]
    if spark is not None:
        fits.append(("Spark MLlib ALS", f"regParam={mllib_reg_param:g}",
                     lambda: train_als_spark(spark, train, rank=params.rank, max_iter=params.iterations,
                                             reg_param=mllib_reg_param, seed=params.seed)))
    for label, penalty, fit in fits:
        load_before = load()
        model, walls = time_fits(fit, runs)
        r, a = score(model, test)
        out.append({"dataset": name, "trainer": label, "penalty": penalty, "rank": params.rank,
                    "iterations": params.iterations,
                    "n_train": train.num_rows, "n_test": test.num_rows, "fit_min_s": round(min(walls), 3),
                    "fit_median_s": round(statistics.median(walls), 3), "rmse": round(r, 4), "mae": round(a, 4),
                    "load_before": load_before, "load_after": load()})
    return out


# ---------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = ["### Streaming replay (first {batches} batches of {size} ratings, default model)".format(
        batches=result["args"]["batches"], size=result["args"]["batch_size"]), "",
        "| engine | start (s) | first batch (s) | p50 (s) | p95 (s) | mean (s) | ratings/s |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["replay"]:
        lines.append(f"| {r['engine']} | {r['start_s']:.2f} | {r['first_batch_s']:.2f} | {r['p50_s']:.3f} | "
                     f"{r['p95_s']:.3f} | {r['mean_s']:.3f} | {r['throughput_ratings_per_s']:,.0f} |")
    if result.get("replay_max_abs_diff") is not None:
        lines += ["", f"Max abs difference between the engines' final states: {result['replay_max_abs_diff']:.2e}"]
    lines += ["", "### Batch ALS (rank 10, 10 iterations; 80/20 random split, seed 42; clipped to [0.5, 5])", "",
              "| data set | trainer | penalty | fit min (s) | fit median (s) | RMSE | MAE |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in result["als"]:
        if "skipped" in r:
            lines.append(f"| {r['dataset']} | {r['skipped']} | | | | | |")
        else:
            lines.append(f"| {r['dataset']} | {r['trainer']} | {r['penalty']} | {r['fit_min_s']:.3f} | "
                         f"{r['fit_median_s']:.3f} | {r['rmse']:.4f} | {r['mae']:.4f} |")
    env = result["environment"]
    lines += ["", f"Machine: {env['cpus']} CPUs, {env['platform']}, Python {env['python']}, Spark {env['spark']} "
                  f"({env['spark_master']}); load average {env['load_start']} at start, {env['load_end']} at end."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=3, help="timed ALS fits per trainer (after one warm-up)")
    ap.add_argument("--spark-master", default="local[*]")
    ap.add_argument("--mllib-reg-param", type=float, default=0.1)
    ap.add_argument("--ml100k", default=str(ML100K))
    ap.add_argument("--no-spark", action="store_true", help="DuckDB and numpy only")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)

    import pyspark

    result = {"args": vars(args), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "environment": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                              "spark": pyspark.__version__, "spark_master": args.spark_master, "load_start": load()},
              "replay": [], "als": []}
    data = load_shipped().slice(0, args.batches * args.batch_size)
    spark = None
    with tempfile.TemporaryDirectory(prefix="engines-bench-") as root:
        warehouses = {}
        for name in ("duckdb",) + (() if args.no_spark else ("spark",)):
            engine, start = make_engine(name, args.spark_master)
            print(f"replay on {name} ...", file=sys.stderr, flush=True)
            r = replay(name, engine, data, args.batches, args.batch_size, Path(root))
            r["start_s"] = round(start, 2)
            warehouses[name] = r.pop("_warehouse")
            result["replay"].append(r)
            if name == "spark":
                spark = engine.spark
        if len(warehouses) == 2:
            result["replay_max_abs_diff"] = state_diff(warehouses["duckdb"], warehouses["spark"])

    for name, table, note in datasets(Path(args.ml100k)):
        if table is None:
            result["als"].append({"dataset": name, "skipped": note})
            continue
        print(f"batch ALS on {name} ...", file=sys.stderr, flush=True)
        result["als"] += bench_als(name, table, spark, args.runs, args.mllib_reg_param)
    result["environment"]["load_end"] = load()
    if spark is not None:
        spark.stop()

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
