"""Concurrency (issue 7.3): two processes ingesting and applying overlapping files at once;
conflicting Delta commits retried with bounded backoff; two Dagster runs of factor_versions
at once. None may double-apply a batch, interleave a model's versions or corrupt a Delta log.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from als_core.datasets import write_ratings
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import file_batch_id, ingest_file
from als_core.store.schemas import MODELS
from als_core.store.warehouse import Warehouse, now_utc, retry_commit
from reliability_helpers import TWO_MODELS, assert_store_consistent, model_states, new_warehouse, start_worker, write_batch_files

N_FILES, BATCH = 12, 500


@pytest.fixture(scope="module")
def batch_files(tmp_path_factory, shipped) -> list[Path]:
    return write_batch_files(tmp_path_factory.mktemp("batches"), shipped, N_FILES, BATCH)


@pytest.mark.slow
def test_two_processes_ingesting_and_applying_overlapping_files(tmp_path, batch_files, duckdb_engine):
    """Process A streams files 0..7 in order, process B files 11..4 in reverse order (4..7 are
    ingested by both). Compaction every 3 versions makes one process's partition overwrite
    race the other's appends. Afterwards the store passes every ledger/version invariant and
    equals a serial replay of the ledger in seq order, version by version, bit for bit."""
    warehouse = new_warehouse(tmp_path / "shared")
    first = start_worker(warehouse.uri, batch_files[:8], compact_every=3)
    second = start_worker(warehouse.uri, list(reversed(batch_files[4:])), compact_every=3)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outputs):
        assert proc.returncode == 0, err.decode()[-3000:]
        assert out.decode().rstrip().endswith("finished")

    assert_store_consistent(warehouse, list(TWO_MODELS), N_FILES)  # also: every Delta log loads

    # The same batches, serially, in the order the ledger gave them.
    by_id = {file_batch_id(path): path for path in batch_files}
    serial = new_warehouse(tmp_path / "serial")
    for record in warehouse.ledger().to_pylist():
        outcome = ingest_file(serial, by_id[record["batch_id"]], holdout_fraction=0.1)
        assert outcome.seq == record["seq"]
    apply_pending(serial, duckdb_engine, evaluate_every=0, compact_every=3)
    for model_id in TWO_MODELS:
        ours, theirs = model_states(warehouse, model_id), model_states(serial, model_id)
        assert len(ours) == len(theirs) == N_FILES
        for version, (a, b) in enumerate(zip(ours, theirs), 1):
            assert a.equals(b), f"model {model_id} version {version} differs from a serial replay"


def test_concurrent_ingestion_allocates_each_batch_one_unique_seq(tmp_path, shipped):
    """Four threads (each with its own Warehouse object, as separate processes would have)
    ingest 8 files each, 4 of them shared by all: the ledger ends with one row per distinct
    file and seqs 1..N without gaps or repeats (the seq is allocated under the ingest lock)."""
    folder = tmp_path / "files"
    folder.mkdir()
    files = [write_ratings(shipped.slice(k * 50, 50), folder / f"f{k:02d}.csv") for k in range(16)]
    shared, own = files[:4], files[4:]
    uri = str(tmp_path / "wh")
    Warehouse(uri).ensure_tables()
    start, errors = threading.Barrier(4), []

    def ingest(worker: int) -> None:
        warehouse = Warehouse(uri)
        try:
            start.wait(timeout=60)
            for path in own[worker * 3:(worker + 1) * 3] + shared[worker:] + shared[:worker]:
                ingest_file(warehouse, path, holdout_fraction=0.1)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert_store_consistent(Warehouse(uri), [], n_batches=4 + 12)


def _model_row(model_id: str) -> pa.Table:
    row = {"model_id": model_id, "rank": 4, "gamma": 0.01, "lambda_": 0.1, "lambda_bias": 0.1, "init_scale": 0.1,
           "seed": 1, "aggregation": "mean", "bias_update": "sgd", "status": "active", "note": "",
           "created_at": now_utc()}
    return pa.Table.from_pylist([row], schema=MODELS)


def test_retry_commit_resolves_a_real_conflicting_overwrite(warehouse):
    """Two threads overwrite the models table from the same snapshot at the same moment: one
    commit wins, the other gets a real CommitFailedError from delta-rs, and retry_commit
    re-runs it (re-reading the table) until both have succeeded."""
    uri = warehouse.table_uri("models")
    write_deltalake(uri, _model_row("first"), mode="overwrite")  # (an empty table has nothing to conflict on)
    both_read = threading.Barrier(2)
    attempts: Counter = Counter()
    failures: Counter = Counter()
    errors = []

    def writer(model_id: str) -> None:
        def attempt():
            attempts[model_id] += 1
            snapshot = DeltaTable(uri)  # re-read on every attempt, as retry_commit requires
            if attempts[model_id] == 1:
                both_read.wait(timeout=60)  # both hold the same snapshot: the later commit conflicts
            try:
                current = snapshot.to_pyarrow_table()
                write_deltalake(snapshot, pa.concat_tables([current, _model_row(model_id)]), mode="overwrite")
            except CommitFailedError:
                failures[model_id] += 1
                raise
        try:
            retry_commit(attempt, base_delay=0.01)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(m,)) for m in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(failures.values()) >= 1, "no conflict happened: the test did not exercise the retry"
    assert sum(attempts.values()) == 2 + sum(failures.values())
    table = DeltaTable(uri)
    assert sorted(table.to_pyarrow_table()["model_id"].to_pylist()) == ["first", "left", "right"]  # no lost update
    overwrites = [h for h in table.history() if h.get("operationParameters", {}).get("mode") == "Overwrite"]
    assert len(overwrites) == 3


def test_retry_commit_gives_up_after_a_bounded_number_of_attempts(warehouse):
    """A commit that conflicts every time (always from a stale snapshot) is attempted exactly
    ``attempts`` times, then the CommitFailedError reaches the caller."""
    uri = warehouse.table_uri("models")
    write_deltalake(uri, _model_row("first"), mode="overwrite")
    stale = DeltaTable(uri)
    write_deltalake(uri, _model_row("winner"), mode="overwrite")
    calls = []

    def always_stale():
        calls.append(1)
        write_deltalake(stale, _model_row("loser"), mode="overwrite")

    with pytest.raises(CommitFailedError):
        retry_commit(always_stale, attempts=4, base_delay=0.001)
    assert len(calls) == 4
    assert DeltaTable(uri).to_pyarrow_table()["model_id"].to_pylist() == ["winner"]


def _factor_versions_asset():
    try:
        from dagster_project import assets
    except Exception as exc:  # noqa: BLE001 - not built yet, or broken: skip with the reason
        pytest.skip(f"dagster_project.assets not importable: {exc}")
    asset = getattr(assets, "factor_versions", None)
    if asset is None:
        pytest.skip("dagster_project has no factor_versions asset yet")
    return asset


@pytest.mark.slow
def test_two_dagster_runs_of_factor_versions_at_once_apply_each_batch_once(tmp_path, batch_files):
    """Two ``dagster.materialize`` runs of factor_versions in two threads against one warehouse
    (separate ephemeral instances, so Dagster's pools do not serialise them: only the store's
    locks and app transactions do)."""
    factor_versions = _factor_versions_asset()
    import dagster as dg

    from dagster_project.resources import EngineResource, StoreResource

    warehouse = new_warehouse(tmp_path / "dagster")
    for path in batch_files[:6]:
        ingest_file(warehouse, path, holdout_fraction=0.1)
    resources = {"store": StoreResource(warehouse_uri=warehouse.uri), "engine": EngineResource(name="duckdb")}
    results, errors = [], []
    start = threading.Barrier(2)

    def run():
        try:
            start.wait(timeout=60)
            results.append(dg.materialize([factor_versions], resources=resources, raise_on_error=False))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert all(r.success for r in results), [r.all_events for r in results if not r.success]
    written = [r.asset_materializations_for_node("factor_versions")[0].metadata["versions_written"].value
               for r in results]
    assert sum(written) == 6 * len(TWO_MODELS), written  # every (model, batch) exactly once in total
    assert_store_consistent(warehouse, list(TWO_MODELS), 6)
    evaluations = warehouse.read("evaluations").to_pylist()
    keys = Counter((e["model_id"], e["version"], e["kind"]) for e in evaluations)
    assert keys and max(keys.values()) == 1, "a version was evaluated twice"
