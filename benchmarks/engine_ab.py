"""A/B of two DuckDB engine implementations, batch by batch, in one process (JSON + table).

This machine's speed drifts by 20-50 % within minutes, so two benchmark runs one after the
other can differ more than the change being measured. Here both variants apply the same
stream to two identical stores (`streaming_step.build_store`), alternating batch by batch
(A B, B A, ...), so a drift hits both alike. Variant B is this checkout's engine with other
options, or the `DuckDBEngine` of another file, e.g. an older commit checked out with
``git worktree add /tmp/old <rev>``; with ``--b-own-sql`` it also runs that checkout's sql/
files (rendered by its sqlgen), so a change of the SQL is measured too. What is timed is `apply_batch`, as in
streaming_step.py; the first batch (cold file cache) is not counted.

    .venv/bin/python benchmarks/engine_ab.py --b-module /tmp/old/als_core/engines/duckdb_engine.py --b-own-sql
    .venv/bin/python benchmarks/engine_ab.py --b-options '{"prepared": false}' --size 1000 --batches 61

Both stores must end with the same factor rows and prequential RMSE (checked and reported).
The two warehouses are removed at the end (``--keep`` keeps them; ``--workdir`` says where
they go): until 2026-12-07 every run left ~1.1-1.3 GB per 10M-user store in the system temp.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_step import MODEL_ID, Phases, build_store, flush_setup_writes  # noqa: E402

from als_core.datasets import synthetic_ratings  # noqa: E402
from als_core.engines.duckdb_engine import DuckDBEngine  # noqa: E402
from als_core.pipeline.apply import apply_batch  # noqa: E402
from als_core.pipeline.ingest import ingest_table  # noqa: E402
from als_core.pipeline.models import model_specs  # noqa: E402

CLIP = (0.5, 5.0)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_class(module_path: str | None, own_sql: bool = False):
    """Engine B's class; ``own_sql``: it renders the sql/ files of its own checkout with that
    checkout's sqlgen (the sqlgen.py beside it finds the sql/ folder beside its package)."""
    if module_path is None:
        return DuckDBEngine
    module = load_module("engine_b", Path(module_path))
    if own_sql:
        module.sqlgen = load_module("engine_b_sqlgen", Path(module_path).with_name("sqlgen.py"))
    return module.DuckDBEngine


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--size", type=int, default=100_000, help="ratings per batch")
    p.add_argument("--batches", type=int, default=31, help="batches per variant, the first one untimed")
    p.add_argument("--a-options", default="{}", help="JSON keyword arguments of engine A (this checkout's)")
    p.add_argument("--b-options", default="{}", help="JSON keyword arguments of engine B")
    p.add_argument("--b-module", default=None, help="file defining engine B's DuckDBEngine (default: this checkout's)")
    p.add_argument("--b-own-sql", action="store_true",
                   help="engine B runs its own checkout's sql/ files and sqlgen (default: this checkout's)")
    p.add_argument("--out", default="-", help="JSON results path ('-': none)")
    p.add_argument("--workdir", default=None, help="where the two temporary warehouses go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the warehouses (default: removed at the end)")
    args = p.parse_args(argv)

    stream = synthetic_ratings(args.batches * args.size, args.users, args.items, rank=args.rank, seed=0)
    variants = {"A": (DuckDBEngine, json.loads(args.a_options), "this checkout"),
                "B": (engine_class(args.b_module, args.b_own_sql), json.loads(args.b_options),
                      (args.b_module or "this checkout") + (" (its own sql/)" if args.b_own_sql else ""))}
    runs, roots = {}, []
    try:
        return compare(args, stream, variants, runs, roots)
    finally:  # the two warehouses (~1.2 GB each at 10M users) do not outlive the run unless asked
        for run in runs.values():
            run["engine"].close()
        for root in roots:
            if args.keep:
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


def compare(args, stream, variants: dict, runs: dict, roots: list) -> dict:
    """Build both stores, alternate their batches, print and return the comparison."""
    for name, (cls, options, source) in variants.items():
        roots.append(Path(tempfile.mkdtemp(prefix=f"engine_ab_{name}_", dir=args.workdir)))
        wh, _ = build_store(roots[-1], args.users, args.items, args.rank, 0, lambda msg: None)
        for n in range(args.batches):
            ingest_table(wh, stream.slice(n * args.size, args.size), source=f"ab[{n}]", holdout=False)
        engine = cls(**options)
        phases = Phases()
        phases.wrap(engine, "step", "engine_step")
        phases.wrap(wh, "commit_factor_version", "commit")
        runs[name] = {"wh": wh, "engine": engine, "phases": phases, "source": source, "options": options,
                      "spec": next(s for s in model_specs(wh) if s.model_id == MODEL_ID),
                      "ledger": wh.ledger().to_pylist(), "version": wh.current_version(MODEL_ID),
                      "latency": [], "phase_list": [], "outputs": []}
    flush_setup_writes()
    for k in range(args.batches):
        for name in ("A", "B") if k % 2 == 0 else ("B", "A"):
            run = runs[name]
            run["phases"].take()
            t0 = time.perf_counter()
            done = apply_batch(run["wh"], run["engine"], run["spec"], run["ledger"][k], CLIP, version=run["version"] + 1)
            elapsed = time.perf_counter() - t0
            run["version"] = done.version
            run["outputs"].append((done.n_rows, done.prequential_rmse))
            if k > 0:
                run["latency"].append(elapsed)
                run["phase_list"].append(run["phases"].take())
    same = runs["A"]["outputs"] == runs["B"]["outputs"]
    result = {"benchmark": "engine_ab", "users": args.users, "items": args.items, "batch_ratings": args.size,
              "timed_batches": args.batches - 1, "same_results": same}
    print("| variant | engine | options | p50 ms | min ms | mean ms | step p50 ms | commit p50 ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        lat = np.asarray(run["latency"]) * 1000
        ph = {key: float(np.median([p.get(key, 0.0) for p in run["phase_list"]])) * 1000
              for key in ("engine_step", "commit")}
        result[name] = {"engine": run["source"], "options": run["options"], "p50_ms": round(float(np.median(lat)), 1),
                        "min_ms": round(float(lat.min()), 1), "mean_ms": round(float(lat.mean()), 1),
                        "step_p50_ms": round(ph["engine_step"], 1), "commit_p50_ms": round(ph["commit"], 1),
                        "latency_ms": [round(float(x), 1) for x in lat]}
        r = result[name]
        print(f"| {name} | {run['source']} | {json.dumps(run['options'])} | {r['p50_ms']} | {r['min_ms']} | "
              f"{r['mean_ms']} | {r['step_p50_ms']} | {r['commit_p50_ms']} |")
    print(f"\nsame factor rows and prequential RMSE in both stores: {same}")
    if args.out != "-":
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
