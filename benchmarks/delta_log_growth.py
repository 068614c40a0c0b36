"""Delta log growth: the cost of committing one factor version as the log accumulates versions.

Two stores, the same stream of commits: `Warehouse.commit_factor_version` with the rows of a
typical 1,000-rating batch (``--rows`` user/item rows of rank ``--rank`` plus the global row),
a compaction every ``--compact-every`` versions (as `apply_pending` does), ``--versions``
versions in all. The first store keeps Delta's default log retention (30 days: within this run
no log entry expires, as in any store younger than a month); the second has a short one
(``--short-retention``, set with `Warehouse.set_log_retention`), so delta-rs deletes the
expired entries when it writes its checkpoint every 100 commits. Each commit lists the log
folder, so its cost follows the number of entries there, whatever the retention that keeps it
at that size (a store committing every 5 s with a 1-day retention holds ~17,000 entries).

    .venv/bin/python benchmarks/delta_log_growth.py            # 1,000 versions, ~2 min here
    .venv/bin/python benchmarks/delta_log_growth.py --versions 300 --out -

Writes benchmarks/results/delta_log_growth.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from als_core.store.schemas import FACTORS
from als_core.store.versions import compact_factors
from als_core.store.warehouse import Warehouse

RESULTS = Path(__file__).resolve().parent / "results" / "delta_log_growth.json"
BUCKET = 100


def version_rows(model_id: str, version: int, n_rows: int, rank: int, rng: np.random.Generator) -> pa.Table:
    """One version's rows: ``n_rows`` user/item rows (ids drawn from 100k users, 20k items) + global."""
    users = rng.choice(100_000, n_rows * 2 // 3, replace=False)
    items = rng.choice(20_000, n_rows - len(users), replace=False)
    sides = ["user"] * len(users) + ["item"] * len(items) + ["global"]
    ids = np.concatenate([users, items, [0]]).astype(np.int64)
    vectors = rng.normal(0.0, 0.1, (len(ids), rank)).astype(np.float32)
    vector = pa.FixedSizeListArray.from_arrays(vectors.ravel(), rank).cast(pa.list_(pa.float32()))
    return pa.table({"model_id": [model_id] * len(ids), "version": np.full(len(ids), version, np.int64),
                     "side": sides, "id": ids, "n": np.ones(len(ids), np.int64),
                     "bias": rng.normal(0.0, 0.1, len(ids)), "vector": vector,
                     "batch_seq": np.full(len(ids), version, np.int64)}, schema=FACTORS)


def run_store(root: Path, retention: str | None, args) -> dict:
    """Commit ``args.versions`` versions; per commit: wall time and log entries before it."""
    warehouse = Warehouse(str(root))
    warehouse.ensure_tables()
    if retention:
        warehouse.set_log_retention(retention)
    log = root / "factors" / "_delta_log"
    rng = np.random.default_rng(args.seed)
    commits = []
    for version in range(1, args.versions + 1):
        rows = version_rows("m", version, args.rows, args.rank, rng)
        entries = sum(1 for _ in os.scandir(log))
        t0 = time.perf_counter()
        if not warehouse.commit_factor_version("m", rows, seq=version):
            raise RuntimeError(f"version {version} was not committed")
        commits.append({"version": version, "seconds": time.perf_counter() - t0, "log_entries": entries})
        if args.compact_every and version % args.compact_every == 0:
            compact_factors(warehouse, "m", full=True)
    return {"retention": warehouse.log_retention()["factors"], "commits": commits,
            "log_entries_at_end": sum(1 for _ in os.scandir(log))}


def buckets(commits: list[dict]) -> list[dict]:
    out = []
    for lo in range(0, len(commits), BUCKET):
        part = commits[lo:lo + BUCKET]
        out.append({"versions": f"{part[0]['version']}-{part[-1]['version']}",
                    "p50_ms": 1e3 * statistics.median(c["seconds"] for c in part),
                    "log_entries_max": max(c["log_entries"] for c in part)})
    return out


def markdown(result: dict) -> str:
    default, short = result["stores"]["default"], result["stores"]["short"]
    lines = [f"| versions | commit p50 ms, retention {default['retention']} | log entries | "
             f"commit p50 ms, retention {short['retention']} | log entries |", "|---|---:|---:|---:|---:|"]
    for a, b in zip(default["buckets"], short["buckets"]):
        lines.append(f"| {a['versions']} | {a['p50_ms']:.1f} | {a['log_entries_max']:,} | {b['p50_ms']:.1f} | "
                     f"{b['log_entries_max']:,} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", type=int, default=1_000)
    ap.add_argument("--rows", type=int, default=1_500, help="user/item rows per version (a 1,000-rating batch: ~1,500)")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--compact-every", type=int, default=50)
    ap.add_argument("--short-retention", default="1 second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="JSON path; '-' for none")
    args = ap.parse_args(argv)
    result = {"benchmark": "delta_log_growth", "args": vars(args), "started": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "load_before": os.getloadavg(), "stores": {}}
    with tempfile.TemporaryDirectory(prefix="log-growth-") as tmp:
        for name, retention in (("default", None), ("short", args.short_retention)):
            store = run_store(Path(tmp) / name, retention, args)
            store["buckets"] = buckets(store["commits"])
            result["stores"][name] = store
            print(f"{name}: {len(store['commits'])} commits, {store['log_entries_at_end']} log entries at the end",
                  file=sys.stderr, flush=True)
    result["load_after"] = os.getloadavg()
    print(markdown(result))
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
