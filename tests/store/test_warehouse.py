"""The Delta factor store: exactly-once commits, crash leftovers, time travel, rollback, compaction."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.store.schemas import check_model_id
from als_core.store.versions import compact_factors, latest_rows, model_state, rollback, to_factor_model
from als_core.store.warehouse import StoreError, Warehouse


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("duckdb")
    yield eng
    eng.close()


def streamed(warehouse, shipped, engine, n_batches=6, model="m"):
    for k in range(n_batches):
        ingest_table(warehouse, shipped.slice(k * 500, 500), source=f"b{k}", holdout=False)
    create_model(warehouse, model, DEFAULT_PARAMS)
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)


def test_tables_are_created_with_the_contract_schemas(warehouse):
    factors = DeltaTable(warehouse.table_uri("factors"))
    names = [f.name for f in factors.schema().fields]
    assert names == ["model_id", "version", "side", "id", "n", "bias", "vector", "batch_seq"]
    assert factors.metadata().partition_columns == ["model_id"]
    assert DeltaTable(warehouse.table_uri("ratings")).protocol().min_reader_version == 1


def test_warehouse_uri_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMING_ALS_WAREHOUSE", str(tmp_path / "from-env"))
    assert Warehouse().uri == str(tmp_path / "from-env")


def test_applying_the_same_batch_twice_writes_one_version(warehouse, shipped, engine):
    streamed(warehouse, shipped, engine, n_batches=3)
    before = DeltaTable(warehouse.table_uri("factors")).version()
    again = apply_pending(warehouse, engine, evaluate_every=0)
    assert again.applied == []
    assert DeltaTable(warehouse.table_uri("factors")).version() == before
    assert warehouse.model_versions("m")["batch_seq"].to_pylist() == [1, 2, 3]
    # A direct second commit of an applied (model, seq) is refused by the app transaction too.
    rows = warehouse.factor_rows("m").slice(0, 1)
    rows = rows.append_column("model_id", pa.array(["m"])).append_column("batch_seq", pa.array([3], pa.int64()))
    assert warehouse.commit_factor_version("m", rows, seq=3) is False
    assert DeltaTable(warehouse.table_uri("factors")).transaction_version("m") == 3


def test_a_crash_between_file_write_and_commit_leaves_nothing_visible(warehouse, shipped, engine):
    """A killed writer leaves a Parquet file in the table folder without a log entry: readers
    must not see it and a rerun must complete the batch normally."""
    streamed(warehouse, shipped, engine, n_batches=2)
    ingest_table(warehouse, shipped.slice(1000, 500), source="b2", holdout=False)
    state_before = model_state(warehouse, "m")
    orphan = warehouse.factor_rows("m").slice(0, 5)
    orphan = orphan.append_column("model_id", pa.array(["m"] * 5)).append_column("batch_seq", pa.array([3] * 5, pa.int64()))
    folder = f"{warehouse.table_uri('factors')}/model_id=m"
    pq.write_table(orphan.drop_columns(["model_id"]), f"{folder}/part-00000-{uuid.uuid4()}-c000.snappy.parquet")
    assert model_state(warehouse, "m").equals(state_before)  # nothing visible
    assert warehouse.applied_seq("m") == 2
    report = apply_pending(warehouse, engine, evaluate_every=0)  # rerun completes
    assert [a.batch_seq for a in report.applied] == [3]
    assert warehouse.model_versions("m")["version"].to_pylist() == [1, 2, 3]


def test_time_travel_reads_any_version(warehouse, shipped, engine):
    streamed(warehouse, shipped, engine, n_batches=4)
    counts = [model_state(warehouse, "m", v).num_rows for v in (1, 2, 3, 4)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    v2 = to_factor_model(model_state(warehouse, "m", 2))
    assert v2.n_ratings == 1000


def test_rollback_restores_an_old_state_as_a_new_version(warehouse, shipped, engine):
    streamed(warehouse, shipped, engine, n_batches=4)
    old = to_factor_model(model_state(warehouse, "m", 2))
    new_version = rollback(warehouse, "m", 2)
    assert new_version == 5
    restored = to_factor_model(model_state(warehouse, "m"))
    assert np.array_equal(restored.user_ids, old.user_ids) and np.array_equal(restored.item_ids, old.item_ids)
    assert np.array_equal(restored.item_factors, old.item_factors) and restored.mu == old.mu
    # History is kept: version 4 is still readable and differs.
    assert model_state(warehouse, "m", 4).num_rows > model_state(warehouse, "m", 5).num_rows
    with pytest.raises(StoreError, match="cannot roll back to 9"):
        rollback(warehouse, "m", 9)


def test_compaction_keeps_state_history_and_makes_batch_reads_small(warehouse, shipped, engine):
    streamed(warehouse, shipped, engine, n_batches=6)
    state = model_state(warehouse, "m")
    v3 = model_state(warehouse, "m", 3)
    history_rows = warehouse.read("factors").num_rows
    record = compact_factors(warehouse, "m")
    assert record["rows_before"] == history_rows and record["rows_after"] < history_rows
    assert model_state(warehouse, "m").sort_by([("side", "ascending"), ("id", "ascending")]).equals(
        state.sort_by([("side", "ascending"), ("id", "ascending")]))
    assert model_state(warehouse, "m", 3).num_rows == v3.num_rows  # time travel past the compaction
    assert warehouse.model_versions("m")["version"].to_pylist() == [1, 2, 3, 4, 5, 6]
    assert warehouse.applied_seq("m") == 6  # the app transaction survives the rewrite
    # After compaction a batch's read returns one row per touched key (+ version history of
    # the global row), not every historical row of those keys.
    users = shipped.slice(0, 500)["user_id"].to_numpy()
    rows = warehouse.factor_rows("m", users, [], include_global=False)
    assert rows.num_rows == len(np.unique(users))


def test_factor_files_are_snappy_without_dictionaries(warehouse, shipped, engine):
    """Version commits and compactions write factor floats plainly (a dictionary of distinct
    floats only costs time and space: docs/streaming_benchmark.md)."""
    streamed(warehouse, shipped, engine, n_batches=2)
    compact_factors(warehouse, "m")
    streamed(warehouse, shipped.slice(1000), engine, n_batches=1, model="m2")  # versions of m and m2
    files = DeltaTable(warehouse.table_uri("factors")).file_uris()
    assert len(files) == 5  # m: the compacted file and one version; m2: three versions
    for path in files:
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_columns):
            column = meta.row_group(0).column(i)
            assert column.compression == "SNAPPY", column.path_in_schema
            assert "RLE_DICTIONARY" not in column.encodings and "PLAIN_DICTIONARY" not in column.encodings, \
                column.path_in_schema


def test_model_ids_reaching_paths_and_sql_are_validated(warehouse):
    for bad in ["../escape", "a b", "x'; DROP TABLE factors; --", "", "a/b"]:
        with pytest.raises(ValueError, match="invalid model id"):
            check_model_id(bad)
    with pytest.raises(ValueError):
        create_model(warehouse, "../../etc")


def test_latest_rows_picks_the_largest_version_per_key():
    t = pa.table({"side": ["user", "user", "item"], "id": [1, 1, 1], "version": [1, 3, 2], "bias": [0.1, 0.3, 0.2]})
    out = latest_rows(t).sort_by("side")
    assert out.to_pydict() == {"side": ["item", "user"], "id": [1, 1], "version": [2, 3], "bias": [0.2, 0.3]}
