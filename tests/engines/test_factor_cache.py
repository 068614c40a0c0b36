"""The DuckDB engine's cache of decoded factor files finds exactly the stored rows of a batch's keys."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from als_core.engines.duckdb_engine import (STORED_SCHEMA, DuckDBEngine, LatestRowIndex, _CachedFile, _newest_rows,
                                          _sorted_ids)
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.store.versions import compact_factors, latest_rows

SIDES = ("user", "item", "global")


def factor_file(sides: list[int], ids: list[int]) -> pa.Table:
    n = len(ids)
    return pa.table({
        "side": [SIDES[s] for s in sides], "id": pa.array(ids, pa.int64()), "version": pa.array(range(n), pa.int64()),
        "n": pa.array([1] * n, pa.int64()), "bias": [0.5] * n,
        "vector": pa.array([[0.25, -0.5]] * n, pa.list_(pa.float32())),
    }, schema=STORED_SCHEMA)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 60)), max_size=80),
       wanted=st.lists(st.integers(-5, 70), max_size=120), code=st.integers(0, 1))
def test_rows_are_every_row_of_the_wanted_ids(rows, wanted, code):
    """Small and large files, repeated keys (several versions of a key in one file), ids outside
    the file's range: the positions are exactly the rows of that side whose id is wanted, and
    the mask says which wanted ids the file holds."""
    entry = _CachedFile(factor_file([s for s, _ in rows], [i for _, i in rows]))
    ids = _sorted_ids(np.array(wanted, dtype=np.int64))
    positions, found = entry.lookup(code, ids)
    expected = np.flatnonzero((entry.codes == code) & np.isin(entry.keys, ids))
    np.testing.assert_array_equal(np.sort(positions), expected)
    np.testing.assert_array_equal(found, np.isin(ids, entry.keys[entry.codes == code]))


def versioned_file(rows: list[tuple[int, int, int]]) -> _CachedFile:
    """A decoded file of (side code, id, version) rows; the bias says which row it is."""
    return _CachedFile(pa.table({
        "side": [SIDES[s] for s, _, _ in rows], "id": pa.array([i for _, i, _ in rows], pa.int64()),
        "version": pa.array([v for _, _, v in rows], pa.int64()), "n": pa.array([1] * len(rows), pa.int64()),
        "bias": [float(v) for _, _, v in rows], "vector": pa.array([[0.5]] * len(rows), pa.list_(pa.float32())),
    }, schema=STORED_SCHEMA))


@settings(max_examples=300, deadline=None)
@given(files=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 4),
                                st.lists(st.tuples(st.integers(0, 1), st.integers(0, 25)), max_size=30)), max_size=6),
       wanted=st.lists(st.integers(0, 30), max_size=40))
def test_newest_rows_keep_every_keys_latest_row(files, wanted):
    """Files with overlapping or disjoint version ranges (a file's rows get versions from
    first to first + spread): the selected rows hold, for every wanted key, its largest
    stored version, and nothing of keys not wanted; and they are said to be one row per key
    exactly when no key was selected twice (the step then skips its latest-row join)."""
    check_newest_rows(files, wanted)


@settings(max_examples=150, deadline=None)
@given(files=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 4),
                                st.lists(st.tuples(st.integers(0, 1), st.integers(0, 25)), max_size=30)), max_size=6),
       wanted=st.lists(st.integers(0, 30), max_size=40))
def test_newest_rows_without_a_membership_table(files, wanted):
    """The same, for ids whose range is too wide for `_WantedIds`' table (binary searches and
    a shrinking sorted array only)."""
    from als_core.engines import duckdb_engine

    saved = duckdb_engine._WantedIds.MAX_TABLE
    duckdb_engine._WantedIds.MAX_TABLE = 0
    try:
        check_newest_rows(files, wanted)
    finally:
        duckdb_engine._WantedIds.MAX_TABLE = saved


def test_a_dense_side_is_looked_up_by_subtraction():
    """A side holding every id of its range once is `dense`: ids inside, below and above the
    range, and ids the file does not hold on the other side."""
    entry = _CachedFile(factor_file([0] * 41 + [1] * 3, list(range(10, 51)) + [3, 9, 40]))
    assert entry.dense == [True, False, False]
    ids = np.array([1, 10, 11, 30, 50, 51, 99], dtype=np.int64)
    positions, found = entry.lookup(0, ids)
    assert entry.keys[positions].tolist() == [10, 11, 30, 50]
    assert found.tolist() == [False, True, True, True, True, False, False]


def check_newest_rows(files, wanted):
    entries, stored = [], []
    for first, spread, keys in files:
        rows = [(side, key, first + (k % (spread + 1))) for k, (side, key) in enumerate(keys)]
        entries.append(versioned_file(rows))
        stored += rows
    ids = _sorted_ids(np.array(wanted, dtype=np.int64))
    got: dict[tuple[int, int], int] = {}
    selected = []
    parts, one_per_key = _newest_rows(entries, [(0, ids), (1, ids)])
    for entry, rows in parts:
        for at in rows:
            side, key, version = int(entry.codes[at]), int(entry.keys[at]), int(entry.version[at])
            assert key in set(wanted)
            got[(side, key)] = max(got.get((side, key), version), version)
            selected.append((side, key))
    expected: dict[tuple[int, int], int] = {}
    for side, key, version in stored:
        if key in set(wanted):
            expected[(side, key)] = max(expected.get((side, key), version), version)
    assert got == expected
    assert one_per_key == (len(selected) == len(set(selected)))


@pytest.mark.slow
def test_cached_reads_equal_the_store_reader(warehouse, shipped):
    """After versions, a compaction and more versions, the cache returns the same rows for a
    batch's keys as `Warehouse.factor_rows` (plus the latest global row only)."""
    engine = DuckDBEngine()
    for k in range(8):
        ingest_table(warehouse, shipped.slice(k * 700, 700), source=f"b{k}", holdout=False)
        if k == 4:
            create_model(warehouse, "m", DEFAULT_PARAMS)
            apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
            compact_factors(warehouse, "m")
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
    batch = shipped.slice(3000, 2000)
    users, items = batch["user_id"].to_numpy(), batch["item_id"].to_numpy()
    cached = engine.stored_factor_rows(warehouse, "m", users, items)
    stored = warehouse.factor_rows("m", users, items)
    assert engine.cache.misses > 0  # the cache answered
    key = [("side", "ascending"), ("id", "ascending"), ("version", "ascending")]
    is_key = lambda t: latest_rows(t.filter(pa.compute.not_equal(t["side"], "global")))  # noqa: E731
    assert is_key(cached).sort_by(key).equals(is_key(stored).select(cached.column_names).cast(cached.schema).sort_by(key))
    assert cached.num_rows < stored.num_rows  # older rows of a key are not passed on
    latest_global = stored.filter(pa.compute.equal(stored["side"], "global")).sort_by([("version", "descending")])
    assert cached.filter(pa.compute.equal(cached["side"], "global"))["version"].to_pylist() == [
        latest_global["version"][0].as_py()]
    engine.close()


def test_scores_as_of_the_latest_version_come_from_the_cache(warehouse, shipped):
    """A holdout score as of the version just applied (asked for by number, as
    `apply_pending` does) is served by the cache, with the same predictions as the store's
    reader gives; an older version (time travel) is read from the store as before."""
    engine, uncached = DuckDBEngine(), DuckDBEngine(cache_bytes=0)
    for k in range(4):
        ingest_table(warehouse, shipped.slice(k * 500, 500), source=f"b{k}", holdout=False)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
    latest = warehouse.current_version("m")
    holdout = shipped.slice(5000, 1000)
    clip = (0.5, 5.0)
    for version in (latest, latest - 2):
        hits, misses = engine.cache.hits, engine.cache.misses
        got = engine.score(warehouse, "m", holdout, version, clip)
        cached = engine.cache.hits + engine.cache.misses > hits + misses
        assert cached == (version == latest), version
        expected = uncached.score(warehouse, "m", holdout, version, clip)
        assert got.equals(expected), version
    older = uncached.score(warehouse, "m", holdout, latest - 2, clip)
    assert not older.equals(uncached.score(warehouse, "m", holdout, latest, clip))  # the versions differ
    engine.close()
    uncached.close()


def test_a_steps_own_file_is_taken_from_its_rows_not_read_back(warehouse, shipped):
    """The file a step's commit writes is decoded from the step's rows (its Delta statistics
    identify it); a file written by someone else is read."""
    engine, other = DuckDBEngine(), DuckDBEngine()
    for k in range(5):
        ingest_table(warehouse, shipped.slice(k * 300, 300), source=f"b{k}", holdout=False)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0, max_batches=1)
    read_before = engine.cache.misses
    apply_pending(warehouse, engine, evaluate_every=0, compact_every=0, max_batches=3)
    assert engine.cache.misses == read_before and engine.cache.adopted == 3  # three versions, none read back
    apply_pending(warehouse, other, evaluate_every=0, compact_every=0)  # another writer's version 5
    batch = shipped.slice(0, 1500)
    users, items = batch["user_id"].to_numpy(), batch["item_id"].to_numpy()
    cached = engine.stored_factor_rows(warehouse, "m", users, items)
    assert engine.cache.misses == read_before + 1  # the other engine's file: read
    stored = warehouse.factor_rows("m", users, items)
    key = [("side", "ascending"), ("id", "ascending"), ("version", "ascending")]
    is_key = lambda t: latest_rows(t.filter(pa.compute.not_equal(t["side"], "global")))  # noqa: E731
    assert is_key(cached).sort_by(key).equals(is_key(stored).select(cached.column_names).cast(cached.schema).sort_by(key))
    engine.close()
    other.close()


def indexed_rows(index: LatestRowIndex, entries: dict, wanted: np.ndarray) -> dict[tuple[int, int], int]:
    """{(side code, id): version} of the rows the index gives for ``wanted``, each key once; the
    (side codes, ids) it gives beside them are those of the rows."""
    got: dict[tuple[int, int], int] = {}
    parts, (codes, ids) = index.newest_rows(entries, [(0, wanted), (1, wanted)])
    assert len(codes) == len(ids) == sum(len(rows) for _, rows in parts)
    start = 0
    for entry, rows in parts:
        np.testing.assert_array_equal(codes[start:start + len(rows)], entry.codes[rows])
        np.testing.assert_array_equal(ids[start:start + len(rows)], entry.keys[rows])
        start += len(rows)
        assert np.all(np.diff(rows) > 0)  # in the file's row order
        for at in rows:
            key = (int(entry.codes[at]), int(entry.keys[at]))
            assert key not in got
            got[key] = int(entry.version[at])
    return got


def latest_versions(files: list[_CachedFile], wanted: np.ndarray) -> dict[tuple[int, int], int]:
    latest: dict[tuple[int, int], int] = {}
    for entry in files:
        for code, key, version in zip(entry.codes, entry.keys, entry.version):
            if code < 2 and key in set(wanted.tolist()):
                latest[(int(code), int(key))] = max(latest.get((int(code), int(key)), -1), int(version))
    return latest


one_row_per_key = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40)), max_size=30, unique=True)


@settings(max_examples=300, deadline=None)
@given(base=st.lists(one_row_per_key, min_size=1, max_size=3), newer=st.lists(one_row_per_key, max_size=4),
       wanted=st.lists(st.integers(-3, 45), max_size=40))
def test_latest_row_index_gives_every_keys_latest_row(base, newer, wanted):
    """An index built from a layer of files (all version 1, no key in two of them), then
    extended by newer files one version each (new ids beyond and below the range): for every
    wanted key it gives the key's latest row, once, and nothing of keys not wanted; extended
    or built afresh from all files, the same rows."""
    ids = _sorted_ids(np.array(wanted, dtype=np.int64))
    owner = {}  # a key belongs to one base file, so the base layer holds it once (id ranges may overlap)
    for k, rows in enumerate(base):
        for key in rows:
            owner.setdefault(key, k)
    files = [versioned_file([(s, i, 1) for s, i in rows if owner[(s, i)] == k]) for k, rows in enumerate(base)]
    paths = [f"base-{k}" for k in range(len(files))]
    index = LatestRowIndex.build(paths, files)
    assert index is not None
    for k, rows in enumerate(newer):
        entry = versioned_file([(s, i + 10 * k - 5, 2 + k) for s, i in rows])
        assert index.extend([f"v{k}"], [entry])
        files.append(entry)
        paths.append(f"v{k}")
    entries = dict(zip(paths, files))
    expected = latest_versions(files, ids)
    assert indexed_rows(index, entries, ids) == expected
    assert indexed_rows(LatestRowIndex.build(paths, files), entries, ids) == expected


def test_latest_row_index_refuses_what_it_cannot_tell():
    """A key twice in one layer (two files of the same version), ids spread too wide, and an
    older file added later: no index (the engine searches the files instead)."""
    assert LatestRowIndex.build(["a", "b"], [versioned_file([(0, 5, 1)]), versioned_file([(0, 5, 1)])]) is None
    assert LatestRowIndex.build(["a", "b"], [versioned_file([(0, 4, 1), (0, 6, 1)]),
                                             versioned_file([(0, 5, 1), (0, 6, 1)])]) is None
    wide = versioned_file([(0, 1, 1), (0, 10 * LatestRowIndex.MIN_SPAN, 1)])
    assert LatestRowIndex.build(["a"], [wide]) is None
    index = LatestRowIndex.build(["a"], [versioned_file([(0, 5, 3)])])
    assert not index.extend(["b"], [versioned_file([(0, 5, 2)])])


@pytest.mark.slow
def test_the_engine_keeps_its_index_current(warehouse, shipped):
    """Steps extend the model's index; a compaction (files gone) makes the engine build it
    again; every step's stored rows equal the store reader's latest rows of the batch's keys."""
    engine = DuckDBEngine()
    create_model(warehouse, "m", DEFAULT_PARAMS)
    indexes = []
    for k in range(6):
        ingest_table(warehouse, shipped.slice(k * 900, 900), source=f"b{k}", holdout=False)
        apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
        indexes.append(engine._indexes["m"])
        if k == 3:
            compact_factors(warehouse, "m")
        batch = shipped.slice(6000 + 500 * k, 500)
        users, items = batch["user_id"].to_numpy(), batch["item_id"].to_numpy()
        cached = engine.stored_factor_rows(warehouse, "m", users, items)
        stored = latest_rows(warehouse.factor_rows("m", users, items))
        key = [("side", "ascending"), ("id", "ascending")]
        assert cached.sort_by(key).equals(stored.select(cached.column_names).cast(cached.schema).sort_by(key))
    assert indexes[1] is indexes[0] and indexes[3] is indexes[2]  # extended in place
    assert indexes[4] is not indexes[3]  # built again after the compaction
    assert len(engine._indexes["m"].paths) == len(warehouse.local_file_paths("factors", warehouse.table("factors")))


def test_files_no_index_fits_are_not_tried_again_at_every_step(monkeypatch):
    """A model whose files cannot be indexed (a key twice in a layer) is searched without an
    index; newer files do not make the engine try again, a file going away does."""
    engine = DuckDBEngine()
    attempts = []
    build = LatestRowIndex.build.__func__
    monkeypatch.setattr(LatestRowIndex, "build",
                        classmethod(lambda cls, paths, entries: attempts.append(paths) or build(cls, paths, entries)))
    twice = [versioned_file([(0, 5, 1)]), versioned_file([(0, 5, 1)])]
    assert engine._latest_index("m", ["a", "b"], twice) is None
    assert engine._latest_index("m", ["a", "b", "c"], twice + [versioned_file([(0, 6, 2)])]) is None
    assert attempts == [["a", "b"]]
    assert engine._latest_index("m", ["a", "c"], [twice[0], versioned_file([(0, 6, 2)])]) is not None
    assert attempts == [["a", "b"], ["a", "c"]]
    engine.close()
