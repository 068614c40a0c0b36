"""Crash safety (issue 7.2): a child process ingesting and applying the first 20 batches of 500
ratings of the shipped set is SIGKILLed 8 times at seeded points (during ingestion, between a
data file write and its Delta commit, between two commits of one ingestion, during and right
after a compaction, after seeded random delays); after each kill the next run continues. A
kill aimed between a data file write and its commit (or right after a compaction's commit)
that lands too late is aimed again at the next batch, up to three tries (`KILL_ATTEMPTS`);
a compaction kill's retry compacts every other version. The final store must equal an
uninterrupted run's, version by version, bit for bit.

The seed is ``$RELIABILITY_SEED`` (default 20240607); a failure message names the plan.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from deltalake import DeltaTable

from als_core.store.warehouse import Warehouse
from reliability_helpers import (
    TWO_MODELS, new_warehouse, write_batch_files,
    Inotify, KillPlan, assert_store_consistent, assert_tables_readable, commit_placed, data_file_in, model_states,
    orphan_files, run_worker,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("RELIABILITY_SEED", "20240607"))
N_BATCHES, BATCH = 20, 500
COMPACT_EVERY = 4
# Batch indices (0-based) whose apply step compacts: versions 4, 8, ... (one version per batch).
COMPACTING = [i for i in range(N_BATCHES) if (i + 1) % COMPACT_EVERY == 0]
# Runs per kill aimed at an instant the child passes in about a millisecond: between a data
# file's rename into place and its commit (1-1.5 ms here, measured with inotify on
# 2026-12-08), or right after a compaction's commit. Such a kill races the child. A kill that
# lands too late still leaves a crashed store (the next run goes on from it), so the plan
# aims again at the next batch; it must land where planned once. (One try missed the
# apply-file point in 2 of 5 full-suite runs on 2026-12-07, and the compact-file point in 1
# of 3 runs of the Spark engine's tests followed by this one on 2026-12-08.) A compaction
# kill's retry compacts every other version (`RETRY_COMPACT_EVERY`), so it comes within two
# batches, not four (every version would not do: a compaction with one new file since the
# last is a no-op). Compaction changes no version's rows, so the final store is still the
# uninterrupted run's.
KILL_ATTEMPTS = {"ingest-file": 3, "apply-file": 3, "compact-file": 3, "compact-commit": 3}
COMPACTION_KILLS = ("compact-file", "compact-commit")
RETRY_COMPACT_EVERY = 2


@pytest.fixture(scope="module")
def batch_files(tmp_path_factory, shipped) -> list[Path]:
    return write_batch_files(tmp_path_factory.mktemp("batches"), shipped, N_BATCHES, BATCH)


def phase_seconds(run, start: str, end: str) -> float:
    """Mean duration between matching start/end progress lines of a run."""
    starts = {line.split()[-1]: t for t, line in run.lines if line.startswith(start)}
    spans = [t - starts[line.split()[2]] for t, line in run.lines
             if line.startswith(end) and line.split()[2] in starts]
    return sum(spans) / len(spans)


def kill_plans(rng: random.Random, reference) -> list[KillPlan]:
    """8 kill points at increasing batch indices: the two compaction kills on batches that
    compact, the others anywhere. Delays are drawn from the reference run's timings: within
    the phase (ingest, apply) or, for 'anytime', up to the next planned kill, so a late kill
    never skips past the batches the later plans aim at."""
    ingest_s = phase_seconds(reference, "ingest start", "ingest done")
    apply_s = phase_seconds(reference, "apply start", "apply done")
    when = {line: t for t, line in reference.lines}
    compact_at = sorted(rng.sample(COMPACTING[:-1], 2))
    others = sorted(rng.sample([i for i in range(1, N_BATCHES - 1) if i not in compact_at], 6))
    modes = ["ingest-file", "ingest-commit", "apply-file", "ingest-delay", "apply-delay", "anytime"]
    rng.shuffle(modes)
    compact_modes = ["compact-file", "compact-commit"]
    rng.shuffle(compact_modes)
    chosen = sorted([*zip(others, modes), *zip(compact_at, compact_modes)])
    plans = []
    for k, (index, mode) in enumerate(chosen):
        next_start = when[f"ingest start {chosen[k + 1][0]}"] if k + 1 < len(chosen) else when["finished"]
        if mode == "ingest-file":
            plans.append(KillPlan(mode, index, r"ingest start", event=data_file_in("ratings")))
        elif mode == "ingest-commit":  # the worker waits after this line: the kill lands before the ledger commit
            plans.append(KillPlan(mode, index, r"ratings committed"))
        elif mode == "apply-file":
            plans.append(KillPlan(mode, index, r"apply start", event=data_file_in("factors")))
        elif mode == "compact-file":
            plans.append(KillPlan(mode, index, r"compact start", event=data_file_in("factors")))
        elif mode == "compact-commit":
            plans.append(KillPlan(mode, index, r"compact start", event=commit_placed("factors")))
        elif mode == "ingest-delay":
            plans.append(KillPlan(mode, index, r"ingest start", delay=rng.uniform(0.0, ingest_s)))
        elif mode == "apply-delay":
            plans.append(KillPlan(mode, index, r"apply start", delay=rng.uniform(0.0, apply_s)))
        else:  # anywhere between this batch and the next planned kill
            span = 0.8 * (next_start - when[f"ingest start {index}"])
            plans.append(KillPlan(mode, index, r"ingest start", delay=rng.uniform(0.0, span)))
    return plans


def evidence(warehouse: Warehouse, plan: KillPlan, orphans_before: dict[str, set]) -> tuple[str | None, str]:
    """(why the kill did not land where planned, or None; what it left behind)."""
    new_orphans = {t: orphan_files(warehouse.table_uri(t)) - orphans_before[t] for t in ("ratings", "factors")}
    unledgered = set(warehouse.read("ratings", columns=["batch_id"])["batch_id"].to_pylist()) - set(
        warehouse.read("batches", columns=["batch_id"])["batch_id"].to_pylist())
    last_factor_op = DeltaTable(warehouse.table_uri("factors")).history(1)[0]
    overwrite = last_factor_op.get("operationParameters", {}).get("mode") == "Overwrite"
    missed = None
    if plan.name == "ingest-file" and not new_orphans["ratings"]:
        missed = "kill did not land between the ratings file write and its commit"
    elif plan.name == "ingest-commit" and not unledgered:
        missed = "kill did not land between the ratings commit and the ledger commit"
    elif plan.name in ("apply-file", "compact-file") and not new_orphans["factors"]:
        missed = "kill did not land between the factors file write and its commit"
    elif plan.name == "compact-commit" and not overwrite:
        missed = "kill did not land right after the compaction commit"
    return missed, (f"orphans {sum(map(len, new_orphans.values()))}, unledgered batches {len(unledgered)}, "
                    f"last factors op {'compaction' if overwrite else 'append'}")


def test_sigkill_at_seeded_points_then_rerun_equals_an_uninterrupted_run(tmp_path, batch_files):
    reference_wh = new_warehouse(tmp_path / "reference")
    reference = run_worker(reference_wh.uri, batch_files, compact_every=COMPACT_EVERY)
    assert reference.lines[-1][1] == "finished", reference.stderr
    rng = random.Random(SEED)
    plans = kill_plans(rng, reference)

    warehouse = new_warehouse(tmp_path / "crashed")
    root = Path(warehouse.uri)

    def watch_folders():
        folders = [root / "ratings", root / "ratings" / "_delta_log", root / "factors", root / "factors" / "_delta_log"]
        return folders + sorted((root / "factors").glob("model_id=*"))

    inotify = Inotify()
    log = []
    try:
        for plan in plans:
            attempts = KILL_ATTEMPTS.get(plan.name, 1)
            for attempt in range(1, attempts + 1):
                orphans_before = {t: orphan_files(warehouse.table_uri(t)) for t in ("ratings", "factors")}
                retry_compaction = attempt > 1 and plan.name in COMPACTION_KILLS
                run = run_worker(warehouse.uri, batch_files, plan=plan, inotify=inotify, watch_folders=watch_folders,
                                 compact_every=RETRY_COMPACT_EVERY if retry_compaction else COMPACT_EVERY)
                context = (f"seed {SEED}, plan {plan}, attempt {attempt}, log so far {log}\n"
                           f"last lines: {run.lines[-3:]}\n{run.stderr[-2000:]}")
                assert run.killed, f"the kill point was never reached: {context}"
                assert run.returncode == -9, context
                assert_tables_readable(warehouse)  # every Delta log still loads after the kill
                missed, left = evidence(warehouse, plan, orphans_before)
                log.append(f"{plan.name}@{plan.index} try {attempt} after {run.killed_after!r}: {left}")
                if missed is None:
                    break
                assert attempt < attempts, f"{missed}: {context}"
    finally:
        inotify.close()
    final = run_worker(warehouse.uri, batch_files, compact_every=COMPACT_EVERY)
    assert final.lines[-1][1] == "finished", final.stderr
    print("\n".join(log))  # shown with -s / on failure: where each kill landed

    for wh in (reference_wh, warehouse):
        assert_store_consistent(wh, list(TWO_MODELS), N_BATCHES)
    assert warehouse.ledger()["batch_id"].to_pylist() == reference_wh.ledger()["batch_id"].to_pylist()
    assert warehouse.read("ratings").num_rows == reference_wh.read("ratings").num_rows == N_BATCHES * BATCH
    for model_id in TWO_MODELS:
        assert warehouse.model_versions(model_id).equals(reference_wh.model_versions(model_id)), model_id
        ours, theirs = model_states(warehouse, model_id), model_states(reference_wh, model_id)
        assert len(ours) == len(theirs) == N_BATCHES
        for version, (a, b) in enumerate(zip(ours, theirs), 1):
            assert a.equals(b), f"model {model_id} version {version} differs from the uninterrupted run ({log})"
