"""The store's fast read paths give exactly what a full Delta read gives, across writers.

Two `Warehouse` objects on one folder stand for two processes: each keeps its own cached
snapshots and in-memory small tables, and must see the other's commits."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model, set_status
from als_core.store.versions import compact_factors, rollback
from als_core.store.warehouse import Warehouse, _may_hold


def full_read(warehouse: Warehouse, name: str) -> pa.Table:
    """The reference: the whole latest snapshot through delta-rs' own pyarrow dataset."""
    return DeltaTable(warehouse.table_uri(name)).to_pyarrow_dataset().to_table()


def same_rows(a: pa.Table, b: pa.Table, key: list[str]) -> bool:
    order = [(k, "ascending") for k in key]
    return a.select(b.column_names).sort_by(order).equals(b.sort_by(order))


def test_small_tables_follow_appends_and_overwrites_by_another_writer(tmp_path, shipped):
    reader, writer = Warehouse(tmp_path / "wh"), Warehouse(tmp_path / "wh")
    reader.ensure_tables()
    ingest_table(writer, shipped.slice(0, 300), source="a", holdout=False)
    assert reader.ledger()["source"].to_pylist() == ["a"]  # first read: the whole table
    for k in range(3):  # appends by the other writer: the reader reads only the new files
        ingest_table(writer, shipped.slice(300 * (k + 1), 300), source=f"b{k}", holdout=False)
        assert same_rows(reader.read("batches"), full_read(writer, "batches"), ["seq"])
    assert reader.ledger()["seq"].to_pylist() == [1, 2, 3, 4]
    create_model(writer, "m1", DEFAULT_PARAMS)
    create_model(writer, "m2", DEFAULT_PARAMS)
    assert sorted(reader.models()["model_id"].to_pylist()) == ["m1", "m2"]
    set_status(writer, "m1", "pruned")  # an upsert rewrites `models`: files are removed
    assert same_rows(reader.read("models"), full_read(writer, "models"), ["model_id"])
    assert reader.models(status="active")["model_id"].to_pylist() == ["m2"]
    filtered = reader.read("batches", filter=pc.field("seq") > 2, columns=["seq", "source"])
    assert filtered.column_names == ["seq", "source"] and sorted(filtered["seq"].to_pylist()) == [3, 4]


def test_cached_snapshots_see_commits_made_through_another_object(tmp_path, shipped):
    first, second = Warehouse(tmp_path / "wh"), Warehouse(tmp_path / "wh")
    first.ensure_tables()
    before = first.table("ratings").version()
    ingest_table(second, shipped.slice(0, 200), source="x", holdout=False)
    assert first.table("ratings").version() == DeltaTable(second.table_uri("ratings")).version() > before
    batch_id = second.ledger()["batch_id"][0].as_py()
    assert first.batch_ratings(batch_id).num_rows == 200


def test_pruned_reads_and_the_current_version_match_full_reads(tmp_path, shipped):
    wh = Warehouse(tmp_path / "wh")
    for k in range(4):
        ingest_table(wh, shipped.slice(250 * k, 250), source=f"s{k}", holdout=False)
    create_model(wh, "m", DEFAULT_PARAMS)
    create_model(wh, "other", DEFAULT_PARAMS)
    engine = get_engine("duckdb")
    try:
        apply_pending(wh, engine, evaluate_every=0, compact_every=0)
        ratings = full_read(wh, "ratings")
        for record in wh.ledger().to_pylist():
            mine = ratings.filter(pc.equal(ratings["batch_id"], record["batch_id"]))
            assert same_rows(wh.batch_ratings(record["batch_id"]), mine, ["user_id", "item_id"])
        assert wh.current_version("m") == 4 and wh.current_version("unknown") == 0
        factors = full_read(wh, "factors")
        globals_m = factors.filter(pc.and_(pc.equal(factors["model_id"], "m"), pc.equal(factors["side"], "global")))
        assert wh.model_versions("m")["version"].to_pylist() == sorted(globals_m["version"].to_pylist())
        rollback(wh, "m", 2)  # a new version 5 restoring version 2
        compact_factors(wh, "m")  # rewrites the model's files; statistics follow
        assert wh.current_version("m") == 5
        assert wh.model_versions("m")["version"].to_pylist() == [1, 2, 3, 4, 5]
        assert wh.current_version("other") == 4  # the other partition is untouched
    finally:
        engine.close()


def test_file_pruning_keeps_every_file_that_may_hold_the_value():
    actions = pa.table({
        "min.batch_id": ["a", "c", None, "e", "ab", "c"],
        "max.batch_id": ["b", "d", None, "e", "ab", "c"],  # "ab": a maximum cut short to a prefix
        "null_count.batch_id": [0, 0, None, 0, 0, 1],
        "partition.model_id": ["m", "m", "x", None, "m", "m"],
    })
    may, sure = _may_hold(actions, "batch_id", "c")
    assert may == [False, True, True, False, False, True]
    assert sure == [False, False, False, False, False, False]  # the last holds nulls too
    assert _may_hold(actions, "batch_id", "abc")[0] == [True, False, True, False, True, False]
    assert _may_hold(actions, "batch_id", "e") == ([False, False, True, True, False, False],
                                                   [False, False, False, True, False, False])
    assert _may_hold(actions, "model_id", "m")[1] == [True, True, False, False, True, True]
    assert _may_hold(actions, "rating", 3.0) is None  # no statistics for the column: no opinion


def test_applied_seq_follows_commits_by_another_writer(tmp_path, shipped):
    """The app transaction is kept per table version: a commit by another object (another
    process) is seen at once, and our own commit is known without a log replay."""
    mine, other = Warehouse(tmp_path / "wh"), Warehouse(tmp_path / "wh")
    for k in range(3):
        ingest_table(mine, shipped.slice(200 * k, 200), source=f"s{k}", holdout=False)
    create_model(mine, "m", DEFAULT_PARAMS)
    engine = get_engine("duckdb")
    try:
        apply_pending(mine, engine, evaluate_every=0, compact_every=0, max_batches=1)
        assert mine.applied_seq("m") == other.applied_seq("m") == 1
        apply_pending(other, engine, evaluate_every=0, compact_every=0, max_batches=1)
        assert mine.applied_seq("m") == 2  # the other object's commit, not our cached 1
        apply_pending(mine, engine, evaluate_every=0, compact_every=0)
        assert mine.applied_seq("m") == 3 == DeltaTable(mine.table_uri("factors")).transaction_version("m")
        assert other.applied_seq("m") == 3 and mine.current_version("m") == 3
    finally:
        engine.close()
