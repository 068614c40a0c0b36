"""Streaming step benchmark (issue 3): per-batch latency of one micro-batch applied end to end.

What is timed: `als_core.pipeline.apply.apply_batch` with the DuckDB engine, i.e. the whole
step of one ledger batch for one model: the "already applied?" check, reading the batch's
ratings from Delta, reading the model's stored factor rows for the batch's ids, the chained
sql/step query plus the prequential scores, the finiteness checks and the Delta commit of the
new factor rows with its app transaction. No holdout evaluation, no compaction in the loop.

Stores: synthetic, one per ``--users`` size, with ``--items`` items. Ratings are
``als_core.datasets.synthetic_ratings`` (rank 10 latent model + noise, power-law popularity of
users and items). Each store is bootstrapped with one factor row per user and item (the
generator's true factors, `synthetic_truth`, stored as float32), written in chunks, then
compacted (`compact_factors`: latest row per key, sorted by (side, id), 16k-row row groups),
then the stream is applied: ``--warmup`` untimed batches of each size, then ``--small-batches``
batches of ``--small-size`` ratings and ``--large-batches`` batches of ``--large-size``.
The setup's writes are flushed to disk before the stream (`flush_setup_writes`).

Beside it, River's ``reco.BiasedMF`` ``learn_one`` over the same ratings (pure Python, one
rating at a time, starting from an empty model), in ratings per second.

The machine may be shared: every batch is timed separately and min / median / p95 are
reported with the load average (``os.getloadavg``) before and after each store. Each store's
stream runs in full before the next store is built. ``--interleave`` builds every store first,
then alternates their batches (A B, B A, ...): a change of the machine's speed during the run
then reaches every store alike, but the stores also evict each other's data from the CPU
caches (measured: both stores' p50 higher than in sequential runs of the same hour).

    .venv/bin/python benchmarks/streaming_step.py                 # 100k and 10M users
    .venv/bin/python benchmarks/streaming_step.py --quick         # smoke run, small sizes
    .venv/bin/python benchmarks/streaming_step.py --users 100000 --small-batches 50
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from als_core.datasets import synthetic_ratings, synthetic_truth
from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_batch
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model, model_specs
from als_core.store.schemas import FACTORS
from als_core.store.versions import compact_factors
from als_core.store.warehouse import Warehouse

RESULTS = Path(__file__).resolve().parent / "results" / "streaming_step.json"
MODEL_ID = "bench"
CLIP = (0.5, 5.0)
TARGET_SMALL_P50_S = 0.050  # p50 <= 50 ms per 1,000-rating batch
TARGET_LARGE_RATE = 500_000  # >= 500,000 ratings/s with 100,000-rating batches
TARGET_SCALING = 1.5  # 10M-user p50 within 1.5x of the 100k-user p50
BOOTSTRAP_CHUNK = 1_000_000


# ---------------------------------------------------------------------- helpers
def stats(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "min": float(a.min()), "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "mean": float(a.mean())}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Phases:
    """Wall time of named calls during one batch (wraps bound methods on the instances)."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, obj, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[label] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out


def bootstrap_rows(model_id: str, side: str, ids: np.ndarray, bias: np.ndarray, vectors: np.ndarray,
                   counts: np.ndarray) -> pa.Table:
    """FACTORS rows of version 1 for one side (vectors built from one flat float32 buffer)."""
    n, rank = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * rank, rank, dtype=np.int32))
    return pa.table({
        "model_id": pa.array([model_id] * n, pa.string()),
        "version": pa.array(np.ones(n, np.int64)),
        "side": pa.array([side] * n, pa.string()),
        "id": pa.array(ids.astype(np.int64)),
        "n": pa.array(counts.astype(np.int64)),
        "bias": pa.array(bias.astype(np.float64)),
        "vector": pa.ListArray.from_arrays(offsets, flat).cast(pa.list_(pa.float32())),
        "batch_seq": pa.nulls(n, pa.int64()),
    }, schema=FACTORS)


def build_store(root: Path, n_users: int, n_items: int, rank: int, seed: int, log) -> tuple[Warehouse, dict]:
    """A warehouse with the model ``bench``: version 1 = the true factors of every user and
    item (in chunks), compacted. Returns the warehouse and timings of the setup."""
    wh = Warehouse(str(root))
    wh.ensure_tables()
    params = dataclasses.replace(DEFAULT_PARAMS, rank=rank)
    create_model(wh, MODEL_ID, params)
    t0 = time.perf_counter()
    truth = synthetic_truth(n_users, n_items, rank=rank, seed=seed)
    rng = np.random.default_rng(seed + 1)
    n_written = 0
    for side, size, bias, factors in (("user", n_users, truth["user_bias"], truth["user_factors"]),
                                      ("item", n_items, truth["item_bias"], truth["item_factors"])):
        for start in range(0, size, BOOTSTRAP_CHUNK):
            stop = min(size, start + BOOTSTRAP_CHUNK)
            counts = rng.integers(1, 50, stop - start)
            rows = bootstrap_rows(MODEL_ID, side, np.arange(start + 1, stop + 1), bias[start:stop],
                                  factors[start:stop], counts)
            wh.append("factors", rows)
            n_written += rows.num_rows
    # The global row: mu and the ratings behind it.
    glob = pa.table({"model_id": [MODEL_ID], "version": pa.array([1], pa.int64()), "side": ["global"],
                     "id": pa.array([0], pa.int64()), "n": pa.array([10 * n_users], pa.int64()),
                     "bias": [float(truth["mean"])], "vector": pa.nulls(1, pa.list_(pa.float32())),
                     "batch_seq": pa.nulls(1, pa.int64())}, schema=FACTORS)
    wh.append("factors", glob)
    del truth
    gc.collect()
    t_boot = time.perf_counter() - t0
    log(f"  bootstrap: {n_written + 1:,} factor rows in {t_boot:.1f} s")
    t0 = time.perf_counter()
    record = compact_factors(wh, MODEL_ID, full=True)
    t_compact = time.perf_counter() - t0
    n_files = len(wh.table("factors").file_uris())
    log(f"  compaction: {record['rows_after']:,} rows, {n_files} file(s), {t_compact:.1f} s")
    return wh, {"bootstrap_rows": n_written + 1, "bootstrap_s": round(t_boot, 2), "compaction_s": round(t_compact, 2),
                "factor_files_after_compaction": n_files}


def flush_setup_writes() -> float:
    """Write the setup's dirty pages to disk (seconds taken). A 10M-user store's setup writes
    ~1 GB, which the kernel writes back ~30 s later (`vm.dirty_expire_centisecs`): measured on
    2026-12-08, 740 MB flushed within 2 s of the first timed batch. That flush would be timed
    with one store's batches and not the other's."""
    t0 = time.perf_counter()
    os.sync()
    return round(time.perf_counter() - t0, 3)


def plan_batches(args) -> list[tuple[str, int, bool]]:
    """(kind, size, timed) in stream order: warm-up then timed, small batches then large."""
    plan = []
    for kind, size, count in (("small", args.small_size, args.small_batches), ("large", args.large_size, args.large_batches)):
        plan += [(kind, size, False)] * args.warmup + [(kind, size, True)] * count
    return plan


class StoreRun:
    """One store's benchmark: `prepare` builds the store, ingests the stream and starts an
    engine; `step` applies the stream's next batch and records it; `finish` times the tiered
    compaction, runs River and summarises (`run_stores` calls them)."""

    def __init__(self, n_users: int, args, log):
        self.n_users, self.args, self.log = n_users, args, log
        self.root = None
        self.out = {"n_users": n_users, "n_items": args.items, "rank": args.rank}
        self.plan = plan_batches(args)
        self.next = 0
        self.first_batch = None
        self.engine = None
        self.per_kind = defaultdict(lambda: {"latency_s": [], "cpu_s": [], "warmup_s": [], "phases": [],
                                             "prequential_rmse": []})

    def prepare(self) -> None:
        args, log = self.args, self.log
        self.out["load_before"] = load()
        self.root = Path(tempfile.mkdtemp(prefix=f"streaming_bench_{self.n_users}_", dir=args.workdir))
        log(f"store: {self.n_users:,} users x {args.items:,} items, rank {args.rank} ({self.root})")
        wh, setup = build_store(self.root, self.n_users, args.items, args.rank, args.seed, log)
        self.wh, self.out["setup"] = wh, setup
        total = sum(size for _, size, _ in self.plan)
        # plus one batch for after the tiered compaction at the end
        stream = synthetic_ratings(total + args.small_size, self.n_users, args.items, rank=args.rank, seed=args.seed)
        t0 = time.perf_counter()
        start, self.slices = 0, []
        for n, (kind, size, timed) in enumerate(self.plan):
            part = stream.slice(start, size)
            start += size
            ingest_table(wh, part, source=f"bench[{n}]", holdout=False)
            self.slices.append(part)
        ingest_table(wh, stream.slice(start, args.small_size), source="bench[after compaction]", holdout=False)
        log(f"  ingested {len(self.plan)} batches ({total:,} ratings) in {time.perf_counter() - t0:.1f} s")
        self.out["stream_ratings"] = total
        self.out["setup"]["flush_s"] = flush_setup_writes()

        self.engine = engine = get_engine("duckdb", **({"threads": args.threads} if args.threads else {}))
        self.phases = phases = Phases()
        phases.wrap(wh, "batch_ratings", "read_batch")
        if hasattr(engine, "_stored_relation"):  # the engine's own reader (file cache)
            phases.wrap(engine, "_stored_relation", "read_factors")
        else:
            phases.wrap(wh, "factor_rows", "read_factors")
        phases.wrap(engine, "step", "engine_step")
        phases.wrap(wh, "commit_factor_version", "commit")
        self.spec = next(s for s in model_specs(wh) if s.model_id == MODEL_ID)
        self.ledger = wh.ledger().to_pylist()
        self.version = wh.current_version(MODEL_ID)

    def step(self) -> None:
        """Apply the stream's next batch and record it."""
        (kind, size, timed), batch = self.plan[self.next], self.ledger[self.next]
        self.next += 1
        self.phases.take()
        c0, t0 = time.process_time(), time.perf_counter()
        done = apply_batch(self.wh, self.engine, self.spec, batch, CLIP, version=self.version + 1)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.version = done.version
        if self.first_batch is None:
            self.first_batch = elapsed  # the engine's cold start: its file cache loads the store
        ph = self.phases.take()
        ph["sql"] = ph.get("engine_step", 0.0) - ph.get("read_factors", 0.0)
        ph["other"] = elapsed - ph.get("engine_step", 0.0) - ph.get("read_batch", 0.0) - ph.get("commit", 0.0)
        rec = self.per_kind[kind]
        rec["size"] = size
        if timed:
            rec["latency_s"].append(elapsed)
            rec["cpu_s"].append(cpu)
            rec["phases"].append(ph)
            rec["n_rows_written"] = rec.get("n_rows_written", 0) + done.n_rows
            if done.prequential_rmse is not None:
                rec["prequential_rmse"].append(done.prequential_rmse)
        else:
            rec["warmup_s"].append(elapsed)

    def finish(self) -> dict:
        """The tiered compaction, the summary, River; the warehouse removed (unless --keep)."""
        out, engine = self.out, self.engine
        try:
            if engine is not None:
                if self.next == len(self.plan):  # the whole stream ran
                    out["tiered_compaction"] = {**tiered_compaction(self.wh, engine, self.spec,
                                                                    self.ledger[len(self.plan)], self.version),
                                                "next_batch_ratings": self.args.small_size}
                    self.log(f"  tiered compaction of the {self.n_users:,}-user store's versions: "
                             f"{out['tiered_compaction']}")
                cache = getattr(engine, "cache", None)
                if cache is not None:
                    out["engine_cache"] = {"bytes": cache.nbytes, "hits": cache.hits, "misses": cache.misses,
                                           "max_bytes": cache.max_bytes}
                engine.close()
            for kind, rec in self.per_kind.items():
                if not rec["latency_s"]:  # warm-up only (e.g. --small-batches 0)
                    continue
                out[kind] = summary(rec)
            out["first_batch_s"] = round(self.first_batch, 4) if self.first_batch is not None else None
            if engine is not None and not self.args.no_river:
                out["river"] = run_river(self.slices, self.plan, self.args)
        finally:
            out["load_after"] = load()
            if self.root is not None and not self.args.keep:
                shutil.rmtree(self.root, ignore_errors=True)
            elif self.root is not None:
                out["warehouse"] = str(self.root)
        return out


def summary(rec: dict) -> dict:
    """One batch size's record: latency and CPU statistics, rates, phase medians."""
    lat = rec.pop("latency_s")
    rec["cpu"] = stats(rec.pop("cpu_s"))
    phases_list = rec.pop("phases")
    rmses = rec.pop("prequential_rmse")
    rec["latency"] = stats(lat)
    rec["latency_s"] = [round(x, 5) for x in lat]
    rec["warmup_s"] = [round(x, 5) for x in rec["warmup_s"]]
    rec["ratings_per_s_at_p50"] = rec["size"] / rec["latency"]["p50"]
    rec["ratings_per_s_overall"] = rec["size"] * len(lat) / sum(lat)
    rec["rows_written_per_batch"] = rec.pop("n_rows_written", 0) / max(len(lat), 1)
    keys = sorted({k for p in phases_list for k in p})
    rec["phases_p50_s"] = {k: round(float(np.median([p.get(k, 0.0) for p in phases_list])), 5) for k in keys}
    rec["prequential_rmse_mean"] = float(np.mean(rmses)) if rmses else None
    return rec


def run_stores(args, log) -> list[dict]:
    """Every store's run: one after the other, or with ``--interleave`` their batches
    alternating (A B, B A, ...) once every store is built."""
    runs = [StoreRun(n, args, log) for n in args.user_sizes]
    if not args.interleave:
        results = []
        for run in runs:
            try:
                run.prepare()
                for _ in run.plan:
                    run.step()
            finally:
                results.append(run.finish())
            gc.collect()
        return results
    try:
        for run in runs:
            run.prepare()
        gc.collect()
        for i in range(len(runs[0].plan) if runs else 0):
            for run in (runs if i % 2 == 0 else runs[::-1]):
                run.step()
    finally:
        results = [run.finish() for run in runs]
    return results


def tiered_compaction(wh: Warehouse, engine, spec, batch: dict, version: int) -> dict:
    """Time a tiered compaction of the versions the stream wrote (the base is the setup's full
    compaction), then one more batch: the engine's cache keeps the base and reads only the
    merged file, where after a full compaction it reads the whole model again."""
    t0 = time.perf_counter()
    record = compact_factors(wh, MODEL_ID, full=False)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_batch(wh, engine, spec, batch, CLIP, version=version + 1)
    return {"kind": record["kind"], "versions": version - 1, "rows_before": record["rows_before"],
            "rows_after": record["rows_after"], "seconds": round(seconds, 3),
            "next_batch_s": round(time.perf_counter() - t0, 4)}


def run_river(slices: list[pa.Table], plan, args) -> dict:
    """River BiasedMF learn_one over the same timed ratings, one rating at a time."""
    try:
        from river import optim, reco
    except ImportError:  # the optional `bench` extra
        return {"skipped": "river is not installed (pip install -e '.[bench]')"}
    model = reco.BiasedMF(n_factors=args.rank, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.05),
                          latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=71),
                          l2_bias=0.0, l2_latent=0.0)
    out = {}
    for kind in ("small", "large"):
        seconds, n = 0.0, 0
        for (k, _size, timed), part in zip(plan, slices):
            if k != kind or not timed:
                continue
            users, items, ys = (part[c].to_pylist() for c in ("user_id", "item_id", "rating"))
            learn = model.learn_one
            t0 = time.perf_counter()
            for u, i, y in zip(users, items, ys):
                learn(u, i, y)
            seconds += time.perf_counter() - t0
            n += len(ys)
        if n:
            out[kind] = {"ratings": n, "seconds": round(seconds, 3), "ratings_per_s": n / seconds}
    return out


# ---------------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(stores: list[dict], args) -> list[dict]:
    rows = []
    for s in stores:
        small, large = s.get("small"), s.get("large")
        if small and small["latency"]:
            p50 = small["latency"]["p50"]
            rows.append({"target": f"p50 per {small['size']:,}-rating batch <= 50 ms ({s['n_users']:,} users)",
                         "measured": f"{p50 * 1000:.1f} ms", "pass": p50 <= TARGET_SMALL_P50_S})
        if large and large["latency"]:
            rate = large["ratings_per_s_at_p50"]
            rows.append({"target": f">= 500,000 ratings/s with {large['size']:,}-rating batches ({s['n_users']:,} users)",
                         "measured": f"{rate:,.0f} ratings/s", "pass": rate >= TARGET_LARGE_RATE})
    for kind, lo, hi in smallest_and_largest(stores):
        ratio = hi[kind]["latency"]["p50"] / lo[kind]["latency"]["p50"]
        rows.append({"target": f"{hi['n_users']:,}-user p50 within 1.5x of {lo['n_users']:,}-user p50 "
                               f"({lo[kind]['size']:,}-rating batches)",
                     "measured": f"{ratio:.2f}x", "pass": ratio <= TARGET_SCALING})
    return rows


def smallest_and_largest(stores: list[dict]) -> list[tuple[str, dict, dict]]:
    """(batch kind, smallest store, largest store) for each kind both stores timed; [] with
    fewer than two store sizes."""
    by_users = {s["n_users"]: s for s in stores}
    if len(by_users) < 2:
        return []
    lo, hi = by_users[min(by_users)], by_users[max(by_users)]
    return [(kind, lo, hi) for kind in ("small", "large")
            if lo.get(kind) and hi.get(kind) and lo[kind]["latency"] and hi[kind]["latency"]]


def cpu_ratios(stores: list[dict]) -> dict[int, float]:
    """Largest store's CPU p50 / smallest store's, by batch size: the ratio of the work each
    step does (every thread's CPU time), which a slow phase of the machine inflates less than
    the latency ratio of the targets. For reading the targets, not a target itself."""
    return {lo[kind]["size"]: round(hi[kind]["cpu"]["p50"] / lo[kind]["cpu"]["p50"], 3)
            for kind, lo, hi in smallest_and_largest(stores)}


def markdown(result: dict) -> str:
    lines = ["| store (users) | batch (ratings) | timed batches | min ms | p50 ms | p95 ms | CPU p50 ms | "
             "ratings/s at p50 | River learn_one ratings/s | p50 phases ms: read batch / read factors / SQL / "
             "commit / other |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in result["stores"]:
        for kind in ("small", "large"):
            rec = s.get(kind)
            if not rec:
                continue
            lat, ph = rec["latency"], rec["phases_p50_s"]
            river = (s.get("river") or {}).get(kind, {}).get("ratings_per_s")
            phase_txt = " / ".join(f"{ph.get(k, 0.0) * 1000:.1f}" for k in ("read_batch", "read_factors", "sql", "commit", "other"))
            lines.append(f"| {s['n_users']:,} | {rec['size']:,} | {lat['n']} | {lat['min'] * 1000:.1f} | "
                         f"{lat['p50'] * 1000:.1f} | {lat['p95'] * 1000:.1f} | {rec['cpu']['p50'] * 1000:.1f} | "
                         f"{rec['ratings_per_s_at_p50']:,.0f} | {f'{river:,.0f}' if river else 'n/a'} | {phase_txt} |")
    cold = [f"{s['n_users']:,} users {s['first_batch_s'] * 1000:,.0f} ms" for s in result["stores"] if s.get("first_batch_s")]
    if cold:
        lines += ["", "First batch of a fresh engine (cold file cache: reads the whole compacted store): " + "; ".join(cold) + "."]
    for s in result["stores"]:
        tiered, setup = s.get("tiered_compaction"), s.get("setup", {})
        if tiered and tiered["kind"] == "tiered":
            lines += ["", f"{s['n_users']:,} users: full compaction (setup, {setup.get('bootstrap_rows', 0):,} rows) "
                          f"{setup.get('compaction_s', float('nan')):.1f} s; tiered compaction of the stream's "
                          f"{tiered['versions']} versions ({tiered['rows_before']:,} rows -> {tiered['rows_after']:,}) "
                          f"{tiered['seconds']:.1f} s, then the next {tiered['next_batch_ratings']:,}-rating batch "
                          f"{tiered['next_batch_s'] * 1000:,.0f} ms."]
    lines += ["", "| target | measured | verdict |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {verdict(t['pass'])} |" for t in result["targets"]]
    if result.get("cpu_ratios"):
        lines += ["", "CPU time p50, largest / smallest store (the work per step, not a target): " + "; ".join(
            f"{size:,}-rating batches {ratio:.2f}x" for size, ratio in result["cpu_ratios"].items()) + "."]
    return "\n".join(lines)


def machine() -> dict:
    import deltalake
    import duckdb
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "duckdb": duckdb.__version__, "deltalake": deltalake.__version__, "pyarrow": pa.__version__,
            "numpy": np.__version__}
    try:
        import river
        info["river"] = river.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="100000,10000000", help="comma-separated store sizes (users); default %(default)s")
    p.add_argument("--items", type=int, default=20_000, help="items in every store (default %(default)s)")
    p.add_argument("--rank", type=int, default=DEFAULT_PARAMS.rank)
    p.add_argument("--small-size", type=int, default=1_000)
    p.add_argument("--small-batches", type=int, default=20)
    p.add_argument("--large-size", type=int, default=100_000)
    # 11, not 5: a p50 of five 100,000-rating batches moved by ~10 % from run to run
    p.add_argument("--large-batches", type=int, default=11)
    p.add_argument("--warmup", type=int, default=1, help="untimed batches before each timed series (default 1)")
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 20k users, 5 x 1k and 2 x 10k ratings")
    p.add_argument("--no-river", action="store_true", help="skip the River comparison")
    p.add_argument("--workdir", default=None, help="where the temporary warehouses go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the warehouses")
    p.add_argument("--interleave", action="store_true",
                   help="build every store first, then alternate their batches (default: one store after the other)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results path (default %(default)s); '-' for none")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.items = "20000", 2_000
        args.small_batches, args.large_size, args.large_batches = 5, 10_000, 2
    args.user_sizes = [int(x.replace("_", "")) for x in str(args.users).split(",") if x.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = datetime.now(timezone.utc)
    result = {"benchmark": "streaming_step", "started_at": started.isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"main({argv!r})",
              "machine": machine(), "load_at_start": load(),
              "config": {k: v for k, v in vars(args).items() if k not in ("user_sizes",)},
              "model_params": DEFAULT_PARAMS.__dict__, "stores": []}
    result["stores"] = run_stores(args, log)
    result["load_at_end"] = load()
    result["targets"] = targets(result["stores"], args)
    result["cpu_ratios"] = cpu_ratios(result["stores"])
    result["seconds_total"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    table = markdown(result)
    print(table)
    print(f"\nload average (1, 5, 15 min): start {result['load_at_start']}, end {result['load_at_end']} "
          f"on {result['machine']['cpus']} CPUs")
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
