"""Merging the small files of the append-only tables: nothing changes but the file count."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.store.maintenance import APPEND_TABLES, compact_small_files, compact_store_tables, small_files
from als_core.store.schemas import TABLES
from als_core.store.versions import compact_factors, model_state
from als_core.store.warehouse import Warehouse


def live_files(warehouse, name):
    return len(warehouse.table(name).file_uris())


def ingest_batches(warehouse, shipped, n, size=500, offset=0, **kwargs):
    return [ingest_table(warehouse, shipped.slice((offset + k) * size, size), source=f"b{offset + k}", **kwargs)
            for k in range(n)]


def test_merging_keeps_every_batch_row_order_ledger_and_transaction(warehouse, shipped):
    outcomes = ingest_batches(warehouse, shipped, 6, compact_every=0)
    batches = {o.batch_id: warehouse.batch_ratings(o.batch_id) for o in outcomes}
    ledger = warehouse.ledger()
    version_before = warehouse.table("ratings").version()
    assert live_files(warehouse, "ratings") == 6

    report = {r["table"]: r for r in compact_store_tables(warehouse, min_files=2)}

    assert report["ratings"]["files_merged"] == 6 and report["ratings"]["rows"] == 3000
    assert report["batches"]["files_merged"] == 6
    assert live_files(warehouse, "ratings") == 1 and live_files(warehouse, "batches") == 1
    for batch_id, rows in batches.items():  # same rows, same (arrival) order
        assert warehouse.batch_ratings(batch_id).equals(rows)
        assert warehouse.transaction_version("ratings", batch_id) == 1
    assert warehouse.ledger().equals(ledger)
    # Re-ingesting a merged batch's content is still a no-op, and time travel still sees the old files.
    again = ingest_table(warehouse, shipped.slice(0, 500), source="again", compact_every=0)
    assert again.already_ingested
    assert DeltaTable(warehouse.table_uri("ratings"), version=version_before).to_pyarrow_dataset().count_rows() == 3000


def test_filters_on_every_column_find_the_same_rows_after_merging(warehouse, shipped):
    """delta-rs turns each file's statistics into a filter expression: a merged file with a
    missing or wrong statistic would silently drop rows from filtered reads."""
    ingest_batches(warehouse, shipped, 3, compact_every=0)
    ingest_table(warehouse, shipped.slice(3000, 300).set_column(3, "rated_at", pa.nulls(300, pa.int64())),
                 source="no timestamps", compact_every=0)  # a column with nulls only, in one file
    create_model(warehouse, "m", DEFAULT_PARAMS)
    engine = get_engine("duckdb")
    try:
        apply_pending(warehouse, engine, evaluate_every=1, compact_every=2, max_batches=2)  # a compactions row
        apply_pending(warehouse, engine, evaluate_every=1, compact_every=0)  # evaluations files, not merged
        compact_factors(warehouse, "m")  # a second compactions file
    finally:
        engine.close()
    names = ["ratings", "batches", "evaluations", "compactions"]
    before = {name: warehouse.read(name) for name in names}
    probes = []
    for name in names:
        rows = before[name]
        assert rows.num_rows and live_files(warehouse, name) >= 2
        for column in rows.column_names:
            for value in {rows[column][0].as_py(), rows[column][rows.num_rows - 1].as_py()}:
                expr = pc.field(column).is_null() if value is None else pc.field(column) == value
                probes.append((name, expr, warehouse.read(name, filter=expr).num_rows))
    compact_store_tables(warehouse, min_files=2)
    fresh = Warehouse(warehouse.uri)  # the dataset as delta-rs builds it from the merged statistics
    for name in names:
        assert live_files(fresh, name) == 1
        assert fresh.table(name).to_pyarrow_dataset().count_rows() == before[name].num_rows
    for name, expr, count in probes:
        got = fresh.table(name).to_pyarrow_dataset().to_table(filter=expr).num_rows
        assert got == count, (name, expr)


def test_merged_ratings_are_sorted_by_batch_in_small_row_groups(warehouse, shipped):
    ingest_batches(warehouse, shipped, 5, size=2000, compact_every=0)
    compact_small_files(warehouse, "ratings")
    (path,) = [u for u in warehouse.table("ratings").file_uris()]
    merged = pq.ParquetFile(path)
    batch_ids = merged.read(columns=["batch_id"])["batch_id"].to_pylist()
    assert batch_ids == sorted(batch_ids)  # so each row group spans few batches and readers skip the rest
    assert merged.metadata.num_row_groups == -(-10_000 // 4_096)
    # The Delta statistics of the merged file are there (readers prune by them).
    stats = warehouse.table("ratings").get_add_actions(flatten=True)
    assert stats["num_records"].to_pylist() == [10_000]


def test_object_stores_merge_with_delta_rs_optimize(warehouse, shipped):
    """The path a non-local store takes (run here on a local table): delta-rs's compaction."""
    from als_core.store.maintenance import _merge_with_delta_rs

    ingest_batches(warehouse, shipped, 4, compact_every=0)
    rows = warehouse.read("ratings").sort_by([("batch_id", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])
    assert _merge_with_delta_rs(warehouse, "ratings") == {"files_merged": 4, "rows": None}
    assert live_files(warehouse, "ratings") == 1
    assert warehouse.read("ratings").sort_by([("batch_id", "ascending"), ("user_id", "ascending"),
                                              ("item_id", "ascending")]).equals(rows)


def test_nothing_to_merge_is_a_no_op(warehouse, shipped):
    ingest_batches(warehouse, shipped, 1, compact_every=0)
    version = warehouse.table("ratings").version()
    assert compact_small_files(warehouse, "ratings", min_files=2)["files_merged"] == 0
    assert warehouse.table("ratings").version() == version
    with pytest.raises(ValueError, match="compact_factors"):
        compact_small_files(warehouse, "factors")


def test_a_model_streamed_from_merged_files_is_bit_identical(tmp_path, shipped):
    engine = get_engine("duckdb")
    states = []
    try:
        for merge in (False, True):
            wh = Warehouse(str(tmp_path / f"merge-{merge}"))
            wh.ensure_tables()
            ingest_batches(wh, shipped, 4, compact_every=0)
            if merge:
                compact_store_tables(wh, min_files=2)
                assert live_files(wh, "ratings") == 1
            create_model(wh, "m", DEFAULT_PARAMS)
            apply_pending(wh, engine, evaluate_every=1, compact_every=0)
            if merge:  # the evaluations written since: merged as well
                n_files = live_files(wh, "evaluations")
                assert n_files >= 3 and compact_small_files(wh, "evaluations")["files_merged"] == n_files
            states.append(model_state(wh, "m").sort_by([("side", "ascending"), ("id", "ascending")]))
            states.append(wh.read("evaluations", columns=["version", "kind", "rmse"]).sort_by("version"))
    finally:
        engine.close()
    assert states[0].equals(states[2]) and states[1].equals(states[3])


def test_ingestion_merges_small_files_every_n_batches(warehouse, shipped):
    ingest_batches(warehouse, shipped, 7, compact_every=3)
    # Merged after batches 3 and 6 (3 small files, then the merged file and 3 new ones): 2 files, + batch 7.
    assert live_files(warehouse, "ratings") == 2
    assert len(small_files(warehouse, "ratings")) == 2
    assert warehouse.read("ratings").num_rows == 3500
    assert warehouse.ledger()["seq"].to_pylist() == list(range(1, 8))


def test_applying_merges_the_evaluations_files(warehouse, shipped):
    ingest_batches(warehouse, shipped, 7, compact_every=0)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    engine = get_engine("duckdb")
    try:
        apply_pending(warehouse, engine, evaluate_every=1, compact_every=3)
    finally:
        engine.close()
    assert live_files(warehouse, "evaluations") == 1  # 7 versions, one file each: merged at the end
    assert sorted(set(warehouse.read("evaluations")["version"].to_pylist())) == list(range(1, 8))


def test_merging_while_another_writer_ingests_loses_and_duplicates_nothing(tmp_path, shipped):
    """Two Warehouse objects on one store (as two processes): one ingests, one merges in a
    loop; conflicting commits are retried, and every row ends up there exactly once."""
    uri = str(tmp_path / "warehouse")
    ingesting, merging = Warehouse(uri), Warehouse(uri)
    ingesting.ensure_tables()
    done = threading.Event()
    merges, errors = [], []

    def merge_loop():
        try:
            while not done.is_set():
                merges.append(compact_small_files(merging, "ratings", min_files=2)["files_merged"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    merger = threading.Thread(target=merge_loop)
    merger.start()
    try:
        outcomes = ingest_batches(ingesting, shipped, 12, size=300, compact_every=0)
    finally:
        done.set()
        merger.join()
    assert not errors
    assert sum(merges) > 0  # the merger did merge while the stream ran
    final = Warehouse(uri)
    rows = final.read("ratings")
    assert rows.num_rows == 12 * 300
    expected = shipped.slice(0, 12 * 300)
    for k, o in enumerate(outcomes):
        got = final.batch_ratings(o.batch_id)
        assert got.num_rows == 300
        assert np.array_equal(got["user_id"].to_numpy(), expected["user_id"].to_numpy()[k * 300:(k + 1) * 300])


def test_every_table_but_factors_and_models_is_merged():
    """factors has its own compaction; models is overwritten whole. Any new table must be one or the other."""
    assert set(APPEND_TABLES) == set(TABLES) - {"factors", "models"}
