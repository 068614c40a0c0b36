"""Scaling benchmark: the streaming step as the factor store grows, and batch ALS fit time.

Part 1, ``step`` (``--users``, ``--history``): for each store size (users; ``--items`` items),
a DuckDB + Delta store is bootstrapped with one factor row per user and item and compacted
(`benchmarks/streaming_step.build_store`, reused). Then ``history - 1`` real 1,000-rating
batches are applied without compaction, so the model has ``history`` versions and the
``factors`` table that many commits. Measured there ("before compaction"): ``--timed``
1,000-rating batches and ``--timed-large`` 100,000-rating batches through
`als_core.pipeline.apply.apply_batch` (read batch, read factor rows, SQL step, checks, Delta
commit). Then `compact_factors` runs and the same number of new batches is measured again
("after compaction"). Latency per 1,000-rating batch (min / p50 / p95) and ratings/s at
100,000-rating batches.

Part 2, ``als`` (``--ratings``, ``--ranks``): `als_core.als.fit_als` (10 iterations, default λ)
on synthetic ratings (`synthetic_ratings(n, n // 100 users, n // 500 items, rank=10)`),
fit time vs number of ratings at rank 10, and vs rank at ``--rank-ratings`` ratings. Each
point runs in its own subprocess; its peak RSS (VmHWM) is reported beside the time.

Each figure once per point (``--repeats`` for more; min and median). The machine may be
shared: os.getloadavg() is recorded before and after each point.

    .venv/bin/python benchmarks/scale.py                          # the default (reduced) grid
    .venv/bin/python benchmarks/scale.py --users 100000 1000000 10000000 --history 1 100 1000 \\
        --ratings 1000000 5000000 20000000 --ranks 10 50 100       # the full grid
    .venv/bin/python benchmarks/scale.py --parts als --ratings 1000000 5000000

Results: benchmarks/results/scale.json and PNG plots scale_*.png beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "scale.json"
CLIP = (0.5, 5.0)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- part 1: step
def step_point(n_users: int, history: int, args) -> dict:
    """One store: build, grow the history, measure, compact, measure."""
    import streaming_step as ss  # the issue-3 benchmark: its store builder and phase timer
    from als_core.datasets import synthetic_ratings
    from als_core.engines.base import get_engine
    from als_core.pipeline.apply import apply_batch
    from als_core.pipeline.ingest import ingest_table
    from als_core.pipeline.models import model_specs
    from als_core.store.versions import compact_factors

    root = Path(tempfile.mkdtemp(prefix=f"scale_{n_users}_{history}_"))
    out = {"n_users": n_users, "n_items": args.items, "history_versions": history, "loadavg_before": loadavg()}
    try:
        t0 = time.perf_counter()
        wh, setup = ss.build_store(root, n_users, args.items, 10, args.seed, lambda m: print(m, flush=True))
        out["setup"] = setup
        if args.log_retention != "default":  # before the stream: every table's log stays bounded
            out["log_retention"] = wh.set_log_retention(args.log_retention)["factors"]
        small, large = 1_000, 100_000
        plan = [small] * (history - 1) + ([small] * args.timed + [large] * args.timed_large) * 2
        stream = synthetic_ratings(sum(plan), n_users, args.items, rank=10, seed=args.seed + 7)
        start = 0
        for k, size in enumerate(plan):
            ingest_table(wh, stream.slice(start, size), source=f"scale[{k}]", holdout=False)
            start += size
        out["setup"]["build_and_ingest_s"] = round(time.perf_counter() - t0, 2)
        engine = get_engine("duckdb")
        spec = next(s for s in model_specs(wh) if s.model_id == ss.MODEL_ID)
        ledger = iter(wh.ledger().to_pylist())
        version = wh.current_version(ss.MODEL_ID)

        def apply_next():
            nonlocal version
            batch = next(ledger)
            t = time.perf_counter()
            done = apply_batch(wh, engine, spec, batch, CLIP, version=version + 1)
            elapsed = time.perf_counter() - t
            version = done.version
            return elapsed

        t0 = time.perf_counter()
        for _ in range(history - 1):
            apply_next()
        out["setup"]["history_apply_s"] = round(time.perf_counter() - t0, 2)
        out["factor_files_before"] = len(wh.table("factors").file_uris())
        out["factor_log_entries"] = sum(1 for _ in (root / "factors" / "_delta_log").iterdir())
        for phase in ("before_compaction", "after_compaction"):
            if phase == "after_compaction":
                t0 = time.perf_counter()
                compact_factors(wh, ss.MODEL_ID, full=True)
                out["compaction_s"] = round(time.perf_counter() - t0, 2)
                out["factor_files_after"] = len(wh.table("factors").file_uris())
            gc.collect()
            lat = [apply_next() for _ in range(args.timed)]
            big = [apply_next() for _ in range(args.timed_large)]
            out[phase] = {"latency_1k": ss.stats(lat), "latency_1k_s": [round(x, 4) for x in lat],
                          "latency_100k_s": [round(x, 3) for x in big],
                          "ratings_per_s_100k": (large * len(big) / sum(big)) if big else None}
        engine.close()
    finally:
        out["loadavg_after"] = loadavg()
        shutil.rmtree(root, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- part 2: ALS
def als_point(n_ratings: int, rank: int, seed: int) -> dict:
    from als_core.als import ALSParams, fit_als, load_compiled
    load_compiled()  # numba and the compiled loops (~0.7 s): a library import, untimed
    from als_core.datasets import synthetic_ratings

    table = synthetic_ratings(n_ratings, max(100, n_ratings // 100), max(50, n_ratings // 500), rank=10, seed=seed)
    u = table["user_id"].to_numpy()
    i = table["item_id"].to_numpy()
    r = table["rating"].to_numpy()
    del table
    gc.collect()
    rss_data = _status_kb("VmRSS") / 1024
    t0 = time.perf_counter()
    fit_als(u, i, r, ALSParams(rank=rank, iterations=10))
    fit_s = time.perf_counter() - t0
    return {"n_ratings": n_ratings, "rank": rank, "iterations": 10, "fit_s": fit_s,
            "rss_with_data_mb": rss_data, "peak_rss_mb": _status_kb("VmHWM") / 1024}


def in_child(kind: str, payload: dict, time_limit: float) -> dict:
    """Run a point in a fresh interpreter (its own peak RSS), with a time limit."""
    before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--child", json.dumps({"kind": kind, "out": str(out), **payload})]
        try:
            proc = subprocess.run(cmd, timeout=time_limit, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {**payload, "status": "did not finish", "time_limit_s": time_limit, "loadavg_before": before}
        if proc.returncode != 0 or not out.exists():
            return {**payload, "status": "failed", "error": proc.stderr[-1500:], "loadavg_before": before}
        return {**json.loads(out.read_text()), "status": "ok", "loadavg_before": before, "loadavg_after": loadavg()}


def child(spec: dict) -> None:
    if spec["kind"] == "als":
        result = als_point(spec["n_ratings"], spec["rank"], spec.get("seed", 0))
    else:
        ns = argparse.Namespace(**spec["args"])
        result = step_point(spec["n_users"], spec["history"], ns)
        result["peak_rss_mb"] = _status_kb("VmHWM") / 1024
    Path(spec["out"]).write_text(json.dumps(result))


def repeat_point(kind, payload, repeats, time_limit, key) -> dict:
    runs = []
    for _ in range(repeats):
        run = in_child(kind, payload, time_limit)
        runs.append(run)
        print(f"{kind} {payload.get('n_ratings', payload.get('n_users'))} {payload.get('rank', payload.get('history'))}: "
              f"{run['status']} {key}={run.get(key)} rss={run.get('peak_rss_mb')}", flush=True)
        if run["status"] != "ok":
            break
    ok = [r[key] for r in runs if r["status"] == "ok"]
    summary = {"min": min(ok), "median": statistics.median(ok)} if ok else None
    return {**payload, "runs": runs, key: summary, "status": runs[-1]["status"]}


# --------------------------------------------------------------------------- plots
def plots(result: dict, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    als = result.get("als", {})
    pts = [p for p in als.get("vs_ratings", []) if p["status"] == "ok"]
    if pts:
        x = np.array([p["n_ratings"] for p in pts], float)
        y = np.array([p["fit_s"]["min"] for p in pts])
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot(x / 1e6, y, "o-", label="fit_als, rank 10, 10 iterations (min)")
        slope = float(np.sum(x * y) / np.sum(x * x))
        ax.plot(x / 1e6, slope * x, "--", color="grey", label=f"linear through 0: {slope * 1e6:.2f} s per 1M ratings")
        ax.set_xlabel("ratings (millions, synthetic)")
        ax.set_ylabel("fit time (s)")
        ax.set_title("Batch ALS fit time vs ratings")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "scale_als_ratings.png", dpi=120)
        plt.close(fig)
        written.append("scale_als_ratings.png")
    pts = [p for p in als.get("vs_rank", []) if p["status"] == "ok"]
    if pts:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot([p["rank"] for p in pts], [p["fit_s"]["min"] for p in pts], "o-")
        ax.set_xlabel("rank")
        ax.set_ylabel("fit time (s)")
        ax.set_title(f"Batch ALS fit time vs rank ({pts[0]['n_ratings']:,} ratings, 10 iterations)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "scale_als_rank.png", dpi=120)
        plt.close(fig)
        written.append("scale_als_rank.png")
    steps = [p for p in result.get("step", []) if p["status"] == "ok"]
    if steps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for hist in sorted({p["history_versions"] for p in steps}):
            sel = sorted((p for p in steps if p["history_versions"] == hist), key=lambda p: p["n_users"])
            users = [p["n_users"] for p in sel]
            for phase, style in (("before_compaction", "o--"), ("after_compaction", "s-")):
                axes[0].plot(users, [p["runs"][0][phase]["latency_1k"]["p50"] * 1000 for p in sel], style,
                             label=f"{hist} versions, {phase.replace('_', ' ')}")
                vals = [p["runs"][0][phase]["ratings_per_s_100k"] for p in sel]
                axes[1].plot(users, vals, style, label=f"{hist} versions, {phase.replace('_', ' ')}")
        axes[0].set_ylabel("p50 latency per 1,000-rating batch (ms)")
        axes[1].set_ylabel("ratings/s, 100,000-rating batches")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("users in the factor store")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Streaming step (DuckDB + Delta) as the store grows")
        fig.tight_layout()
        fig.savefig(out_dir / "scale_step.png", dpi=120)
        plt.close(fig)
        written.append("scale_step.png")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["als", "step"], choices=["als", "step"])
    ap.add_argument("--users", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--history", nargs="+", type=int, default=[1, 100])
    ap.add_argument("--timed", type=int, default=10, help="timed 1,000-rating batches per phase")
    ap.add_argument("--timed-large", type=int, default=2, help="timed 100,000-rating batches per phase")
    ap.add_argument("--ratings", nargs="+", type=int, default=[1_000_000, 5_000_000])
    ap.add_argument("--ranks", nargs="+", type=int, default=[10, 50, 100])
    ap.add_argument("--rank-ratings", type=int, default=1_000_000)
    ap.add_argument("--log-retention", nargs="+", default=["default"],
                    help="Delta log retention of the step stores ('default' = Delta's 30 days, or e.g. '1 second'); "
                         "each value is one more series of points")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=1200.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for part in ("als", "step"):  # a part not re-run keeps its own start time
        if part in result and f"{part}_started" not in result:
            result[f"{part}_started"] = result.get("started")
        if part in args.parts:
            result[f"{part}_started"] = started
    result.update({"protocol": __doc__, "shared_machine": True, "cpus": os.cpu_count(),
                   "started": started, "loadavg_start": loadavg()})
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        result["loadavg_end"] = loadavg()
        args.out.write_text(json.dumps(result, indent=1, default=str))

    if "als" in args.parts:
        result["als"] = {"vs_ratings": [], "vs_rank": []}
        for n in args.ratings:
            result["als"]["vs_ratings"].append(
                repeat_point("als", {"n_ratings": n, "rank": 10}, args.repeats, args.time_limit, "fit_s"))
            save()
        for rank in args.ranks:
            if rank == 10 and args.rank_ratings in args.ratings:
                result["als"]["vs_rank"].append(next(p for p in result["als"]["vs_ratings"]
                                                     if p["n_ratings"] == args.rank_ratings))
                continue
            result["als"]["vs_rank"].append(
                repeat_point("als", {"n_ratings": args.rank_ratings, "rank": rank}, args.repeats, args.time_limit, "fit_s"))
            save()
    if "step" in args.parts:
        result["step"] = []
        for retention in args.log_retention:
            sub = {"items": args.items, "timed": args.timed, "timed_large": args.timed_large, "seed": args.seed,
                   "log_retention": retention}
            for n_users in args.users:
                for hist in args.history:
                    point = repeat_point("step", {"n_users": n_users, "history": hist, "args": sub}, 1,
                                         args.time_limit, "peak_rss_mb")
                    result["step"].append({**point, "history_versions": hist, "log_retention": retention})
                    save()
    save()
    print("plots:", plots(result, args.out.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
