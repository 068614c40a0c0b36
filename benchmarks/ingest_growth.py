"""Ingestion cost as batches accumulate: `ingest_table` per 1,000-rating batch, over a long stream.

Each ingested batch appends one file to ``ratings`` and one to ``batches``, and a delta-rs
(1.6) commit costs time in proportion to the table's live files. Three stores get the same
stream of ``--batches`` synthetic batches of ``--batch-size`` ratings:

* ``never merged``: ``compact_every=0`` (the behaviour before `als_core.store.maintenance`);
* ``merged every 100``: the default, the append-only tables' small files merged every 100
  batches (`compact_store_tables`), the merge's time included in that batch's latency;
* ``merged + 1 s log retention``: the same, plus `Warehouse.set_log_retention("1 second")`,
  so delta-rs also drops expired log entries at its checkpoints (every 100 commits).

Per store: p50 and max latency per block of ``--block`` batches. Writes
benchmarks/results/ingest_growth.json and prints a Markdown table.

    .venv/bin/python benchmarks/ingest_growth.py                  # 1,500 batches, ~10 min here
    .venv/bin/python benchmarks/ingest_growth.py --batches 300 --out -
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

from als_core.datasets import synthetic_ratings
from als_core.pipeline.ingest import COMPACT_EVERY, ingest_table
from als_core.store.warehouse import Warehouse

RESULTS = Path(__file__).resolve().parent / "results" / "ingest_growth.json"
STORES = [("never merged", 0, None), (f"merged every {COMPACT_EVERY}", COMPACT_EVERY, None),
          (f"merged every {COMPACT_EVERY} + 1 s log retention", COMPACT_EVERY, "1 second")]


def run_store(root: Path, compact_every: int, retention: str | None, stream, args) -> dict:
    warehouse = Warehouse(str(root))
    warehouse.ensure_tables()
    if retention:
        warehouse.set_log_retention(retention)
    latencies = []
    for k in range(args.batches):
        batch = stream.slice(k * args.batch_size, args.batch_size)
        started = time.perf_counter()
        ingest_table(warehouse, batch, source=f"batch{k}", holdout=False, compact_every=compact_every)
        latencies.append(time.perf_counter() - started)
    blocks = []
    for lo in range(0, args.batches, args.block):
        part = latencies[lo:lo + args.block]
        blocks.append({"batches": f"{lo + 1}-{lo + len(part)}", "p50_ms": round(statistics.median(part) * 1e3, 1),
                       "max_ms": round(max(part) * 1e3, 1)})
    return {"compact_every": compact_every, "log_retention": retention, "blocks": blocks,
            "total_s": round(sum(latencies), 2), "ratings_files_at_end": len(warehouse.table("ratings").file_uris()),
            "latency_s": [round(x, 4) for x in latencies]}


def markdown(result: dict) -> str:
    names = list(result["stores"])
    lines = ["| batches | " + " | ".join(f"{n}: p50 / max ms" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for i, block in enumerate(result["stores"][names[0]]["blocks"]):
        cells = [f"{result['stores'][n]['blocks'][i]['p50_ms']} / {result['stores'][n]['blocks'][i]['max_ms']}"
                 for n in names]
        lines.append(f"| {block['batches']} | " + " | ".join(cells) + " |")
    lines.append("| total s | " + " | ".join(str(result["stores"][n]["total_s"]) for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--block", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="JSON path, or - for none")
    args = ap.parse_args(argv)
    stream = synthetic_ratings(args.batches * args.batch_size, 100_000, 20_000, rank=10, seed=args.seed)
    result = {"protocol": __doc__, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "args": vars(args), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "stores": {}}
    for name, compact_every, retention in STORES:
        with tempfile.TemporaryDirectory(prefix="ingest-growth-") as tmp:
            result["stores"][name] = run_store(Path(tmp), compact_every, retention, stream, args)
        print(f"{name}: {result['stores'][name]['total_s']} s", file=sys.stderr, flush=True)
    result["loadavg_after"] = os.getloadavg()
    print(markdown(result))
    if args.out != "-":
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
