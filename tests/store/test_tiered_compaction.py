"""Tiered compaction: the files written since the last full compaction are merged into one,
the full compaction's files stay, and every version reads as before."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.store.versions import compact_factors, model_state, split_base_tail
from als_core.store.warehouse import Warehouse

KEY = [("side", "ascending"), ("id", "ascending")]


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("duckdb")
    yield eng
    eng.close()


def stream(warehouse, shipped, engine, batches: range) -> None:
    for k in batches:
        ingest_table(warehouse, shipped.slice(k * 500, 500), source=f"b{k}", holdout=False)
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)


def live_files(warehouse) -> dict[str, tuple[int, int]]:
    """path -> (min, max) version of the model's live files."""
    actions = warehouse.add_actions("factors", warehouse.table("factors"))
    return dict(zip(actions["path"].to_pylist(), zip(actions["min.version"].to_pylist(),
                                                     actions["max.version"].to_pylist())))


def states(warehouse, versions) -> dict[int, pa.Table]:
    return {v: model_state(warehouse, "m", v).sort_by(KEY) for v in versions}


def test_tiered_compaction_merges_the_tail_and_keeps_the_base(warehouse, shipped, engine):
    ingest_table(warehouse, shipped.slice(0, 500), source="b0", holdout=False)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    stream(warehouse, shipped, engine, range(1, 6))
    assert compact_factors(warehouse, "m", full=True)["kind"] == "full"
    base = live_files(warehouse)
    stream(warehouse, shipped, engine, range(6, 9))  # versions 7, 8, 9: one file each
    assert split_base_tail(warehouse.add_actions("factors", warehouse.table("factors")), "m")[0] == 6
    before = states(warehouse, range(1, 10))
    history = warehouse.model_versions("m")

    record = compact_factors(warehouse, "m", full=False)

    assert record["kind"] == "tiered" and record["compacted_version"] == 9
    files = live_files(warehouse)
    assert base.items() <= files.items()  # the full compaction's files are untouched
    tail = {p: r for p, r in files.items() if p not in base}
    assert list(tail.values()) == [(7, 9)]  # one merged file instead of three
    assert record["rows_before"] > record["rows_after"]  # keys touched by several versions: one row each
    after = states(warehouse, range(1, 10))
    assert all(after[v].equals(before[v]) for v in before)  # time travel reads every version as before
    assert warehouse.model_versions("m").equals(history)
    assert warehouse.applied_seq("m") == 9  # the app transaction survives the rewrite
    assert compact_factors(warehouse, "m")["kind"] == "none"  # the tail is one file already

    misses = engine.cache.misses
    stream(warehouse, shipped, engine, range(9, 11))  # versions 10, 11
    # The engine read only the merged file from disk; the base stayed in its cache.
    assert engine.cache.misses - misses == 1
    local = dict(zip(live_files(warehouse), warehouse.local_file_paths("factors", warehouse.table("factors"))))
    assert all(engine.cache.holds(local[p]) for p in base)
    assert compact_factors(warehouse, "m", full=False)["kind"] == "tiered"
    tail = {p: r for p, r in live_files(warehouse).items() if p not in base}
    assert list(tail.values()) == [(7, 11)]  # the previous merge is merged again with what came after
    assert model_state(warehouse, "m", 8).sort_by(KEY).equals(before[8])


def test_the_default_rewrites_everything_unless_the_tail_is_small_beside_a_compacted_base(warehouse, shipped, engine):
    ingest_table(warehouse, shipped.slice(0, 500), source="b0", holdout=False)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    stream(warehouse, shipped, engine, range(1, 4))
    # No compaction yet: the base (version 1's file) is not a compaction's output.
    assert compact_factors(warehouse, "m", tail_fraction=100.0)["kind"] == "full"
    stream(warehouse, shipped, engine, range(4, 6))
    assert compact_factors(warehouse, "m", tail_fraction=100.0)["kind"] == "tiered"
    stream(warehouse, shipped, engine, range(6, 8))
    _, base_rows, _, tail_rows = split_base_tail(warehouse.add_actions("factors", warehouse.table("factors")), "m")
    assert tail_rows > 0.01 * base_rows
    record = compact_factors(warehouse, "m", tail_fraction=0.01)
    assert record["kind"] == "full" and record["compacted_version"] == 8
    assert list(live_files(warehouse).values()) == [(1, 8)]  # one sorted file of the latest rows


def test_steps_after_a_tiered_compaction_equal_steps_after_a_full_one(tmp_path, shipped, engine):
    """The DuckDB engine's cached reads (base, merged tail, newer versions) give the next batch
    the same stored rows either way: the same factors, bit for bit."""
    results = []
    for full in (True, False):
        warehouse = Warehouse(str(tmp_path / f"full-{full}"))
        warehouse.ensure_tables()
        ingest_table(warehouse, shipped.slice(0, 500), source="b0", holdout=False)
        create_model(warehouse, "m", DEFAULT_PARAMS)
        stream(warehouse, shipped, engine, range(1, 4))
        compact_factors(warehouse, "m", full=True)
        stream(warehouse, shipped, engine, range(4, 7))
        assert compact_factors(warehouse, "m", full=full)["kind"] == ("full" if full else "tiered")
        stream(warehouse, shipped, engine, range(7, 9))
        state = model_state(warehouse, "m").sort_by(KEY)
        results.append(state.drop_columns([c for c in state.column_names if c == "batch_seq"]))
    assert results[0].num_rows > 0 and results[0].equals(results[1])
    assert pc.max(results[0]["version"]).as_py() == 9
