"""Child process of the crash-safety and concurrency tests: ingest rating files one at a time
and apply each to every active model, printing a progress line before each step.

    python stream_worker.py WAREHOUSE [--handshake] [--compact-every N] [--evaluate-every N] FILE...

It uses the real pipeline (``ingest_file`` then ``apply_pending`` with the DuckDB engine on a
Delta warehouse). The only addition is observation: ``compact_factors`` as called by
``apply_pending`` is wrapped to print ``compact start MODEL`` / ``compact done MODEL`` around
the real call, and ``Warehouse.append`` to print ``ratings committed BATCH`` after the real
commit of a batch's ratings (before ``ingest_table`` writes its ledger row). With
``--handshake`` the worker waits for a line on stdin after every progress line, so a test can
arm a kill (inotify watches) before the next step begins, or kill the worker while it waits:
a kill on ``ratings committed`` lands between the two commits of an ingestion whatever the
machine's load.

Progress lines: ``start``, ``ingest start I``, ``ratings committed BATCH``, ``ingest done I seq S``,
``apply start I``, ``version MODEL V``, ``compact start MODEL``, ``compact done MODEL``,
``apply done I``, ``finished``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("warehouse")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--handshake", action="store_true")
    parser.add_argument("--compact-every", type=int, default=4)
    parser.add_argument("--evaluate-every", type=int, default=0)
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, flush=True)
        if args.handshake and not sys.stdin.readline():
            sys.exit(3)  # the test went away

    import als_core.pipeline.apply as apply_module
    from als_core.engines.base import get_engine
    from als_core.pipeline.ingest import ingest_file
    from als_core.store.warehouse import Warehouse

    real_compact = apply_module.compact_factors

    def observed_compact(warehouse, model_id, *a, **kw):
        say(f"compact start {model_id}")
        record = real_compact(warehouse, model_id, *a, **kw)
        say(f"compact done {model_id}")
        return record

    apply_module.compact_factors = observed_compact
    real_append = Warehouse.append

    def observed_append(self, name, rows, txn=None):
        real_append(self, name, rows, txn)
        if name == "ratings":
            say(f"ratings committed {txn[0] if txn else '-'}")

    Warehouse.append = observed_append

    warehouse = Warehouse(args.warehouse)
    engine = get_engine("duckdb")
    try:
        say("start")
        for index, path in enumerate(args.files):
            say(f"ingest start {index}")
            outcome = ingest_file(warehouse, path, holdout_fraction=0.1)
            say(f"ingest done {index} seq {outcome.seq}")
            say(f"apply start {index}")
            report = apply_module.apply_pending(
                warehouse, engine, evaluate_every=args.evaluate_every, compact_every=args.compact_every,
                on_version=lambda done: say(f"version {done.model_id} {done.version}"))
            report.raise_failures()
            say(f"apply done {index}")
        say("finished")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
