"""The DuckDB engine: runs the sql/ steps on Arrow relations in an in-process DuckDB.

Stored factors come from the store as Arrow; DuckDB's ``delta`` extension is never used.

Hot path of one micro-batch (measured in docs/streaming_benchmark.md):

* **One statement per step.** The step chain and its prequential scores run as one query:
  every sql/ file is a CTE, the scores are ``rating_errors``' prediction column (the model
  before the batch, cold-start rule included), and rows and scores come back as one Arrow
  table split by ``rating_seq`` (only a score has one). The query finds its Arrow inputs as
  Python variables (`_statement`): no view is created or dropped per step. A CTE read by two
  or more later parts is MATERIALIZED; one read once is NOT MATERIALIZED, so DuckDB streams
  it into its reader instead of storing it first (the per-key gradient sums flow straight
  into apply_gradients). The connection keeps no row order (``preserve_insertion_order``
  off), so DuckDB builds those CTEs and the result in parallel; key vectors are STRUCTs
  inside the query (`sqlgen`'s ``vec_load``), carried through its joins as fixed-size columns.
* **Prepared once.** Parsing, binding and planning the ~9,000-character query cost ~25-30 ms
  (more than running it on 1,000 ratings); `PreparedQueries` prepares it once per thread
  over Arrow slots that each step fills.
* **Factor reads from a cache of immutable files.** Delta data files never change once
  written, so the engine keeps the decoded rows of the model's ``factors`` files (numpy
  columns sorted by (side, id)) in a byte-bounded LRU cache keyed by path. Which files are
  live comes from the Delta snapshot at every step, so a commit, a compaction or a rollback
  by anyone is seen at once; only files never seen before are read (the last commit's small
  file, which the engine decodes from the step's own rows on a worker thread while the
  caller commits them; the whole store once per process and after each compaction). The step
  receives each of the batch's keys' latest stored row and the model's latest global row
  (older rows cannot change its result: it keeps the latest row per key). A per-model index
  (`LatestRowIndex`: id -> newest file and row, per side, extended by each step's file)
  finds them with one gather per side, O(batch) whatever the store's size and the versions
  since the last compaction; stores it cannot index (hashed ids, a key twice in a layer)
  search the files, newest layer first (`_newest_rows`). When the rows are one per key they are passed as
  ``latest_factors`` and the step's latest-row join (sql/step/00) is skipped. A score as
  of the model's latest version, asked for by number, is read the same way. Object
  stores, time travel and files the cache cannot hold use `Warehouse.factor_rows`.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from als_core import init
from als_core.engines import sqlgen
from als_core.engines.base import (PREQUENTIAL_COLUMNS, PREQUENTIAL_RELATION, SCORE_FILES, STEP_FILES, ModelSpec,
                                   StepResult, batch_relation, from_latest_rows, in_rating_order, score_params,
                                   vector_lengths)
from als_core.store.schemas import check_model_id
from als_core.store.warehouse import is_plain_parquet

#: Default size of the factor file cache (bytes of decoded Arrow data), overridable with the
#: environment variable STREAMING_ALS_DUCKDB_CACHE_BYTES or the engine's ``cache_bytes``.
DEFAULT_CACHE_BYTES = 4 << 30
STORED_COLUMNS = ["side", "id", "version", "n", "bias", "vector"]
STORED_SCHEMA = pa.schema([("side", pa.string()), ("id", pa.int64()), ("version", pa.int64()), ("n", pa.int64()),
                           ("bias", pa.float64()), ("vector", pa.list_(pa.float32()))])
_SIDES = ("user", "item", "global")
ROW_COLUMNS = ["model_id", "version", "side", "id", "n", "bias", "vector", "batch_seq"]
#: Rows per record batch of a query's Arrow result: DuckDB's vector size, so that each batch
#: of the step's result holds rows of one UNION ALL part (but the one at the border) and
#: `split_rows_and_scores` sorts whole batches instead of filtering every column.
RESULT_BATCH_ROWS = 2048


def arrow_of(result) -> pa.Table:
    """A DuckDB result as a pyarrow Table (DuckDB 2 returns a RecordBatchReader)."""
    out = result.arrow()
    return out.read_all() if hasattr(out, "read_all") else pa.table(out)


def _with(ctes: list[tuple[str, str]], final: str) -> str:
    """``WITH ... <final>`` over (name, body) CTEs. A CTE read by two or more later parts is
    MATERIALIZED (computed once; DuckDB 2 may still stream it to its readers); one read once
    is NOT MATERIALIZED, so DuckDB inlines it and streams it into its reader instead of
    storing it first."""
    texts = [re.sub(r"/\*.*?\*/|--[^\n]*", " ", body, flags=re.S) for _, body in ctes] + [final]
    parts = []
    for at, (name, body) in enumerate(ctes):
        quoted = re.escape(f'"{name}"')
        pattern = re.compile(rf"(?<![\w\"']){re.escape(name)}(?![\w\"'])|{quoted}")
        readers = sum(len(pattern.findall(text)) for text in texts[at + 1:])
        keyword = "MATERIALIZED" if readers > 1 else "NOT MATERIALIZED"
        parts.append(f'"{name}" AS {keyword} (\n{body}\n)')
    return "WITH " + ",\n".join(parts) + "\n" + final


def _bodies(steps, rank: int | None = None) -> list[tuple[str, str]]:
    return [(name, sqlgen.load(file, "duckdb", rank)) for file, name in steps]


@lru_cache(maxsize=None)
def _chained(steps: tuple[tuple[str, str], ...], rank: int | None) -> str:
    return _with(_bodies(steps, rank), f'SELECT * FROM "{steps[-1][1]}"')


def chained_query(steps: list[tuple[str, str]], rank: int | None = None) -> str:
    """The files of ``steps`` as one query (``rank``: the model's, for files using vec_weighted_sum)."""
    return _chained(tuple(steps), rank)


@lru_cache(maxsize=None)
def step_and_score_query(rank: int, latest_only: bool = False) -> str:
    """The step chain and its prequential scores in one statement: the new factor rows, then
    the scores, told apart by ``rating_seq`` (only a score has one). A tag column would cost
    its conversion to Arrow: ~4 ms for a 100,000-rating step's 140k result rows.
    ``latest_only``: the stored rows hold one row per key, passed as ``latest_factors``
    (`base.from_latest_rows`)."""
    files = from_latest_rows(STEP_FILES) if latest_only else STEP_FILES
    rows = files[-1][1]
    scores = ", ".join(PREQUENTIAL_COLUMNS)
    return _with(_bodies(files, rank),
                 f"SELECT * FROM \"{rows}\"\n"
                 f"UNION ALL BY NAME\n"
                 f"SELECT {scores} FROM \"{PREQUENTIAL_RELATION}\" WHERE prediction IS NOT NULL")


def split_rows_and_scores(result: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The step query's result (`step_and_score_query`) as (new factor rows, scores): a score
    is a row with a ``rating_seq``. Batches of one part are taken whole (each part's own
    columns only); a batch holding both is filtered. 100,000 ratings: ~3 ms, against ~8 ms
    to filter the whole result twice (and ~2 ms more to convert it in 1M-row batches)."""
    rows, scores = [], []
    for batch in result.to_batches():
        seq = batch.column("rating_seq")
        if seq.null_count == batch.num_rows:
            rows.append(batch.select(ROW_COLUMNS))
        elif seq.null_count == 0:
            scores.append(batch.select(PREQUENTIAL_COLUMNS))
        else:
            is_row = seq.is_null()
            rows.append(batch.select(ROW_COLUMNS).filter(is_row))
            scores.append(batch.select(PREQUENTIAL_COLUMNS).filter(pc.invert(is_row)))

    def schema(columns):
        return pa.schema([result.schema.field(c) for c in columns])

    return pa.Table.from_batches(rows, schema(ROW_COLUMNS)), pa.Table.from_batches(scores, schema(PREQUENTIAL_COLUMNS))


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenation of range(lo[k], hi[k]) for every k (vectorised)."""
    lengths = hi - lo
    if len(lengths) == 0 or lengths.max(initial=0) <= 1:
        return lo[lengths == 1]
    keep = lengths > 0
    lo, lengths = lo[keep], lengths[keep]
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return starts + np.arange(lengths.sum())


def vec_init_arrow(seed: pa.Array, side: pa.Array, ids: pa.Array, rank: pa.Array, scale: pa.Array) -> pa.Array:
    """``vec_init`` for DuckDB, an Arrow scalar function: the rows' initial vectors from
    `als_core.init.init_vectors` itself, so DuckDB starts unseen keys exactly where the numpy
    reference does (Spark computes the same hash in SQL). A Python function binds in a
    fraction of the time of the SQL hash (measured: 8-12 ms less per 1,000-rating step)."""
    seed, side, ids, rank, scale = (a.to_numpy(zero_copy_only=False) for a in (seed, side, ids, rank, scale))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(rank, out=offsets[1:])
    flat = np.empty(offsets[-1], dtype=np.float64)
    settings = np.stack([seed, side, rank, scale.view(np.int64)], axis=1)
    groups, which = np.unique(settings, axis=0, return_inverse=True)  # one group per (model, side)
    which = which.reshape(-1)
    for at, (s, d, r, _) in enumerate(groups):
        rows = np.flatnonzero(which == at)
        vectors = init.init_vectors(int(s), int(d), ids[rows], int(r), float(scale[rows[0]]))
        flat[_ranges(offsets[rows], offsets[rows + 1])] = vectors.reshape(-1)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))


# `_execute` reads a DB-API result as Arrow, which DuckDB warns copies the rows: it does (a
# 1,000-rating step's ~2,000 rows), and costs less than the views it saves (see `_statement`).
warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning,
                        module=re.escape(__name__))

#: The relations the sql/ files read (the engine's inputs), as `_statement` names them.
RELATION_NAMES = ("stored_factors", "latest_factors", "batch_ratings", "step_params", "score_params",
                  "ratings_to_score")


def _execute(con: duckdb.DuckDBPyConnection, query: str, **relations) -> pa.Table:
    """Run ``query`` over ``relations`` (Arrow data by the names the sql/ files use)."""
    return _statement(con, query, **relations).to_arrow_table(RESULT_BATCH_ROWS)


def _statement(con: duckdb.DuckDBPyConnection, statement: str, stored_factors=None, latest_factors=None,
               batch_ratings=None, step_params=None, score_params=None,
               ratings_to_score=None) -> duckdb.DuckDBPyConnection:
    """Run ``statement`` with its relations as this function's local variables: DuckDB finds an
    Arrow table named in a query among the calling function's variables (a replacement
    scan), so no view is created or dropped. Registering a step's four relations as views
    and dropping them afterwards costs ~5 ms (0.8 ms per view); measured on one store, 200
    alternating 1,000-rating steps of two engines: p50 99.7 ms this way, 103.6 ms with views
    (and 100.3 / 100.5 ms for two identical engines). A relation the query needs but the
    caller did not pass is None here, and DuckDB refuses the query."""
    return con.execute(statement)


class _ArrowSlot:
    """A relation whose Arrow table can be swapped. DuckDB reads it through the Arrow
    PyCapsule stream interface and asks for a new stream at every scan, so a statement
    prepared over the slot reads the table the slot holds when the statement runs."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table):
        self.table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self.table.__arrow_c_stream__(requested_schema)


class PreparedQueries:
    """Queries prepared once over slots (`_ArrowSlot`) named like the relations they read, on a
    cursor of their own. A run puts the relations in the slots and executes the prepared
    statement. Measured (docs/streaming_benchmark.md, items 19 and 22): the 1,000-rating step
    query alone, p50 14 ms prepared against 38 ms planned afresh; the 100,000-rating one,
    121-137 ms against 144-169 ms; same results.

    DuckDB cannot know how many rows a PyCapsule stream holds, so it plans every slot as a
    one-row input: the plan does not depend on the data of the step it was prepared with,
    and serves every batch size alike (join order and build sides are those of that
    estimate; measured faster than planning each step with the real sizes, planning
    included). Each set of relation names and schemas (a plan is bound to the types) gets a
    cursor, slots and statements of its own (`_PreparedSet`)."""

    #: Relation sets (names and schemas) kept prepared at once: a step and a holdout score
    #: alternate in a replay; more sets than this (new schemas) push out the oldest.
    MAX_SETS = 4

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.sets: OrderedDict[tuple, _PreparedSet] = OrderedDict()  # by relation names and schemas

    def run(self, relations: dict[str, pa.Table], query: str) -> pa.Table:
        signature = tuple((name, rows.schema) for name, rows in relations.items())
        prepared = self.sets.get(signature)
        if prepared is None:
            prepared = self.sets[signature] = _PreparedSet(self.con.cursor(), relations)
            while len(self.sets) > self.MAX_SETS:
                self.sets.popitem(last=False)[1].close()
        self.sets.move_to_end(signature)
        return prepared.run(relations, query)

    def close(self) -> None:
        for prepared in self.sets.values():
            prepared.close()
        self.sets.clear()


class _PreparedSet:
    """One cursor, its slots (one per relation name) and the statements prepared over them."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, relations: dict[str, pa.Table]):
        self.cursor = cursor
        self.slots = {name: _ArrowSlot(rows) for name, rows in relations.items()}
        self.statements: dict[str, str] = {}  # query: prepared statement name

    def run(self, relations: dict[str, pa.Table], query: str) -> pa.Table:
        for name, rows in relations.items():
            self.slots[name].table = rows
        try:
            name = self.statements.get(query)
            if name is None:
                name = f"prepared_{len(self.statements)}"
                _statement(self.cursor, f"PREPARE {name} AS {query}", **self.slots)
                self.statements[query] = name
            # the slots are passed again: should DuckDB ever bind the statement anew, it finds them
            return _execute(self.cursor, f"EXECUTE {name}", **self.slots)
        finally:  # the slots do not keep a step's tables alive until the next one
            for name, rows in relations.items():
                self.slots[name].table = rows.schema.empty_table()

    def close(self) -> None:
        self.cursor.close()


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """The scalar functions the rendered sql/ files call in DuckDB (see `sqlgen`)."""
    bigint, double = duckdb.sqltype("BIGINT"), duckdb.sqltype("DOUBLE")
    con.create_function("vec_init", vec_init_arrow, [bigint, bigint, bigint, bigint, double],
                        duckdb.sqltype("DOUBLE[]"), type="arrow")


class _CachedFile:
    """The decoded rows of one ``factors`` data file as numpy columns, sorted by (side, id).

    Vectors of one length (the model's rank) are kept as one 2-d float32 array; a file whose
    vectors have different lengths (a wrong-rank write the step must see, and refuse, as it
    is) or null components keeps its Arrow list column instead. (Tried and dropped: a row's
    version, n, bias and vector as one 64-byte record, so that `_gather` reads a row with one
    random access instead of four: ~2 ms less per 100,000-rating step on a 10M-user store, but
    interleaving the columns made decoding a 1.67M-row file 110-450 ms instead of ~35, ~1 s
    more for every cold read of that store.)"""

    __slots__ = ("codes", "keys", "bounds", "unique", "dense", "version", "versions", "n", "n_valid", "bias",
                 "bias_valid", "vectors", "vector_valid", "all_vectors_valid", "vector_list", "nbytes")

    def __init__(self, table: pa.Table):
        table = table.combine_chunks()
        codes = pc.index_in(table["side"], value_set=pa.array(_SIDES)).fill_null(-1).to_numpy().astype(np.int8)
        if (codes < 0).any() or table["id"].null_count or table["version"].null_count:
            raise ValueError("unexpected side, or null id/version")
        ids = table["id"].to_numpy()
        version = table["version"].to_numpy()
        n, n_valid = _values(table["n"], 0)
        bias, bias_valid = _values(table["bias"], 0.0)
        vector = table["vector"].chunk(0) if table["vector"].num_chunks else pa.array([], STORED_SCHEMA.field("vector").type)
        valid = vector.is_valid().to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(vector).to_numpy(zero_copy_only=False)[valid] if len(vector) else np.zeros(0)
        flat = pc.list_flatten(vector)
        dense = None
        if (len(lengths) == 0 or lengths.min() == lengths.max()) and flat.null_count == 0:
            rank = int(lengths[0]) if len(lengths) else 0
            values = flat.to_numpy(zero_copy_only=False).reshape(len(lengths), rank)
            if len(lengths) == len(vector):  # no null vectors (the usual case): no copy
                dense = values
            else:
                dense = np.zeros((len(vector), rank), dtype=np.float32)
                dense[valid] = values
        # A version file comes in the step's (hash) order: sort the numpy columns, not the table
        in_order = np.all((codes[1:] > codes[:-1]) | ((codes[1:] == codes[:-1]) & (ids[1:] >= ids[:-1])))
        if not in_order:
            order = np.lexsort((ids, codes))
            codes, ids, version, n, bias, valid = (a[order] for a in (codes, ids, version, n, bias, valid))
            n_valid, bias_valid = (a[order] if a is not None else None for a in (n_valid, bias_valid))
            if dense is not None:
                dense = np.take(dense, order, axis=0)
            else:
                vector = vector.take(pa.array(order))
        self.codes, self.keys, self.version = codes, ids, version
        self.n, self.n_valid, self.bias, self.bias_valid = n, n_valid, bias, bias_valid
        self.bounds = np.searchsorted(codes, np.arange(len(_SIDES) + 1))
        self.versions = (int(version.min()), int(version.max())) if len(version) else None  # (min, max)
        self.unique = [bool(np.all(np.diff(ids[lo:hi]) > 0)) for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]
        # a side whose ids are every integer of their range once (a compacted store of
        # surrogate ids): an id's row is found by subtraction, not by binary search
        self.dense = [bool(u and hi > lo and ids[hi - 1] - ids[lo] == hi - lo - 1)
                      for u, lo, hi in zip(self.unique, self.bounds[:-1], self.bounds[1:])]
        self.vector_valid, self.vectors, self.all_vectors_valid = valid, dense, bool(valid.all())
        self.vector_list = vector if dense is None else None  # lengths differ, or null components: kept as they are
        self.nbytes = sum(a.nbytes for a in (self.codes, self.keys, self.bounds, self.version, self.n, self.bias,
                                             self.vector_valid, self.n_valid, self.bias_valid) if a is not None)
        self.nbytes += self.vectors.nbytes if self.vectors is not None else vector.nbytes

    def lookup(self, code: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the rows of side ``code`` whose id is in ``ids`` (sorted, unique),
        which of ``ids`` this file holds): the mask lets the caller drop the found ids
        without searching them again."""
        found = np.zeros(len(ids), dtype=bool)
        lo, hi = self.bounds[code], self.bounds[code + 1]
        if lo == hi or len(ids) == 0:
            return np.zeros(0, dtype=np.int64), found
        keys = self.keys[lo:hi]
        first, last = np.searchsorted(ids, (keys[0], keys[-1]))
        inside = ids[first:last + 1]  # the ids within this file's key range
        if len(inside) == 0:
            return np.zeros(0, dtype=np.int64), found
        if len(keys) <= len(inside):  # a small file (one version's rows): look its keys up among the ids
            at = np.minimum(np.searchsorted(inside, keys), len(inside) - 1)
            hit = inside[at] == keys
            found[first + at[hit]] = True
            return lo + np.flatnonzero(hit), found
        if self.dense[code]:  # (inside may end with an id beyond the last key)
            inside = inside[:np.searchsorted(inside, keys[-1], "right")]
            found[first:first + len(inside)] = True
            return lo + (inside - keys[0]), found
        at = np.searchsorted(keys, inside)
        hit = keys[np.minimum(at, len(keys) - 1)] == inside
        found[first:first + len(inside)] = hit
        if self.unique[code]:  # one row per key: one binary search
            return lo + at[hit], found
        return lo + _ranges(at, np.searchsorted(keys, inside, "right")), found

    def latest_global(self) -> tuple[int, int] | None:
        """(version, position) of the file's latest global row."""
        lo, hi = self.bounds[2], self.bounds[3]
        if lo == hi:
            return None
        at = lo + int(np.argmax(self.version[lo:hi]))
        return int(self.version[at]), at


def _version_layers(entries: list[_CachedFile]) -> list[list[_CachedFile]]:
    """The files grouped into layers, newest first: files whose version ranges overlap share
    a layer (e.g. a bootstrap written in several appends, or a compaction's output files), and
    every version of a layer is above every version of the layers after it."""
    layers: list[list[_CachedFile]] = []
    top = None  # the smallest version of the layer being built
    for entry in sorted((e for e in entries if e.versions is not None), key=lambda e: e.versions[1], reverse=True):
        if layers and entry.versions[1] >= top:
            layers[-1].append(entry)
            top = min(top, entry.versions[0])
        else:
            layers.append([entry])
            top = entry.versions[0]
    return layers


class _WantedIds:
    """The ids of one side a lookup still looks for (sorted, distinct). When their range is
    small enough they are also a membership table, a byte per id of the range: a file with
    about as many keys as there are ids (a version's file) is then searched with one gather
    of its keys instead of a binary search per key, and found ids are dropped by clearing
    their bytes. (10M-user store, 100,000-rating batch, 12 version files: 45 ms of binary
    searches before.) Ids of a wide range (hashed keys, say) keep the sorted array only, and
    drop found ids by the masks of `_CachedFile.lookup`."""

    MAX_TABLE = 1 << 26  # bytes

    def __init__(self, ids: np.ndarray):
        self.ids, self.count, self.table, self.stale = ids, len(ids), None, False
        self.held = None  # without a table: which of ``ids`` the files searched since the last drop hold
        if len(ids):
            self.lo, self.hi = int(ids[0]), int(ids[-1])
            span = self.hi - self.lo + 1
            if span <= min(self.MAX_TABLE, max(1 << 16, 256 * len(ids))):
                self.table = np.zeros(span, dtype=bool)
                self.table[ids - self.lo] = True

    def rows_in(self, entry: _CachedFile, code: int) -> np.ndarray:
        """Positions of the entry's rows of side ``code`` whose id is still wanted."""
        lo, hi = entry.bounds[code], entry.bounds[code + 1]
        if self.count == 0 or lo == hi:
            return np.zeros(0, dtype=np.int64)
        if self.table is not None and (hi - lo <= 8 * self.count or not entry.unique[code]):
            keys = entry.keys[lo:hi]
            first, last = np.searchsorted(keys, (self.lo, self.hi + 1))
            hit = self.table[keys[first:last] - self.lo]
            return lo + first + np.flatnonzero(hit)
        rows, held = entry.lookup(code, self.remaining())
        if self.table is None:
            self.held = held if self.held is None else self.held | held
        return rows

    def remaining(self) -> np.ndarray:
        if self.stale:
            self.ids, self.stale = self.ids[self.table[self.ids - self.lo]], False
        return self.ids

    def drop(self, keys: np.ndarray, n_distinct: int) -> None:
        """Stop looking for ``keys`` (found; ``n_distinct`` distinct ids among them): their
        bytes are cleared, or, without a table, the ids the lookups since the last drop found."""
        if self.table is not None:
            self.table[keys - self.lo] = False
            self.stale = True
        else:
            self.ids, self.held = self.ids[~self.held], None
        self.count -= n_distinct


def _disjoint(layer: list[_CachedFile], code: int) -> bool:
    """No two files of the layer can hold the same id of side ``code`` (their id ranges do
    not overlap: a compaction's output files, say)."""
    ranges = sorted((e.keys[e.bounds[code]], e.keys[e.bounds[code + 1] - 1]) for e in layer
                    if e.bounds[code + 1] > e.bounds[code])
    return all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def _newest_rows(entries: list[_CachedFile],
                 wanted: list[tuple[int, np.ndarray]]) -> tuple[list[tuple[_CachedFile, np.ndarray]], bool]:
    """(file, positions) of the rows of the wanted keys (side code, sorted distinct ids) that
    can be a key's latest row: every row of the key in the newest layer holding it
    (`_version_layers`), none in older layers, whose versions are all lower; and whether
    that is one row per key (then it is each key's latest row). Without this the step got
    every stored row of its keys: after ten 100,000-rating versions of a 100k-user store,
    229k rows where 39k are current (the step keeps the latest per key)."""
    parts = []
    one_per_key = True
    layers = _version_layers(entries)
    for code, ids in wanted:
        looking = _WantedIds(ids)
        for layer in layers:
            if looking.count == 0:
                break
            found = []
            for entry in layer:
                rows = looking.rows_in(entry, code)
                if len(rows):
                    parts.append((entry, rows))
                    found.append((entry, entry.keys[rows]))
            if not found:
                continue
            keys = np.concatenate([k for _, k in found]) if len(found) > 1 else found[0][1]
            if all(e.unique[code] for e, _ in found) and (len(found) == 1 or _disjoint(layer, code)):
                n_distinct = len(keys)
            else:  # a key may have several rows in this layer: the step's latest-row join picks one
                n_distinct = len(np.unique(keys))
                one_per_key = one_per_key and n_distinct == len(keys)
            looking.drop(keys, n_distinct)
    return parts, one_per_key


class LatestRowIndex:
    """Where each key's latest row is among a model's live files: per side (user, item), the
    file (its place in ``paths``) and the position of the key's latest row, packed in one
    int64 per id of the side's range (``place << 32 | position``, -1: no row). A step finds
    its keys' rows with one gather per side, O(batch) whatever the store's size and number of
    files: `_newest_rows` visits every layer of files instead (measured on a 10M-user store,
    100,000-rating batches: ~7 ms per batch 12 versions after a compaction and ~13 ms 45
    versions after, against ~2 ms here plus ~1 ms to add the step's file).

    It is built from the files (a compacted side is a range of consecutive ids: one slice per
    file), extended by newer files (a step's version), and built again when a file goes (a
    compaction, another writer's overwrite). It exists only where the newest layer holding a
    key (`_version_layers`) holds it once, so that row is the key's latest, and where the ids
    span at most ``SPAN_FACTOR`` times the rows (or ``MIN_SPAN``): surrogate ids, not hashed
    ones. Otherwise `build` gives None and the engine searches the files. Memory: 8 bytes per
    id of the range (80 MB for 10M users), besides the file cache."""

    SPAN_FACTOR = 4
    MIN_SPAN = 1 << 20

    def __init__(self):
        self.paths: list[str] = []
        self.place: dict[str, int] = {}  # path: its place in paths
        self.top: int | None = None  # the highest version indexed
        self.lo = [0, 0]
        self.where = [np.full(0, -1, np.int64), np.full(0, -1, np.int64)]  # per side, by id - lo
        self.rows = [0, 0]  # rows indexed per side (at least its keys)

    @classmethod
    def build(cls, paths: list[str], entries: list[_CachedFile]) -> LatestRowIndex | None:
        """The index of these files (``entries[k]`` decoded from ``paths[k]``), or None."""
        index = cls()
        return index if index.extend(paths, entries) else None

    def extend(self, paths: list[str], entries: list[_CachedFile]) -> bool:
        """Index these files, whose versions must all be above the indexed ones; False if they
        are not, or if a layer holds a key twice (the index is then unusable: build anew)."""
        layers = _version_layers(entries)
        if len(self.paths) + len(paths) > np.iinfo(np.int16).max:  # see newest_rows
            return False
        if layers and self.top is not None and min(e.versions[0] for e in layers[-1]) <= self.top:
            return False
        for code in (0, 1):  # room for the files' ids (new users and items)
            sides = [e for e in entries if e.bounds[code + 1] > e.bounds[code]]
            if not sides:
                continue
            first = min(int(e.keys[e.bounds[code]]) for e in sides)
            last = max(int(e.keys[e.bounds[code + 1] - 1]) for e in sides)
            rows = self.rows[code] + sum(int(e.bounds[code + 1] - e.bounds[code]) for e in sides)
            if len(self.where[code]):
                first, last = min(first, self.lo[code]), max(last, self.lo[code] + len(self.where[code]) - 1)
            if last - first + 1 > max(self.MIN_SPAN, self.SPAN_FACTOR * rows):
                return False
            self._grow(code, first, last)
            self.rows[code] = rows
        place = {id(entry): len(self.paths) + at for at, entry in enumerate(entries)}
        self.paths += paths
        self.place.update((path, place[id(entry)]) for path, entry in zip(paths, entries))
        for layer in reversed(layers):  # oldest first: a newer layer's rows overwrite older ones
            for code in (0, 1):
                if not all(e.unique[code] for e in layer):
                    return False
                checked = len(layer) == 1 or _disjoint(layer, code)
                mine = np.array([place[id(e)] for e in layer], dtype=np.int32)
                for entry in layer:
                    if not self._assign(code, place[id(entry)], entry, None if checked else mine):
                        return False
        if layers:  # the newest layer's versions are above every indexed one (checked above)
            self.top = max(e.versions[1] for e in layers[0])
        return True

    def _assign(self, code: int, at: int, entry: _CachedFile, layer: np.ndarray | None) -> bool:
        """Point the entry's keys of side ``code`` at its rows; with ``layer`` (the places of
        the files of its layer, whose id ranges overlap) False if one of them holds a key too."""
        start, stop = int(entry.bounds[code]), int(entry.bounds[code + 1])
        if start == stop:
            return True
        if entry.dense[code]:  # consecutive ids: slices
            where = slice(int(entry.keys[start]) - self.lo[code], int(entry.keys[stop - 1]) - self.lo[code] + 1)
        else:
            where = entry.keys[start:stop] - self.lo[code]
        if layer is not None and np.isin(self.where[code][where] >> 32, layer).any():
            return False
        self.where[code][where] = np.arange((at << 32) + start, (at << 32) + stop, dtype=np.int64)
        return True

    def _grow(self, code: int, first: int, last: int) -> None:
        """Make the side's arrays cover ids first..last (amortised: new ids arrive with most
        batches, so the range grows by half at least)."""
        lo, size = self.lo[code], len(self.where[code])
        if size and first >= lo and last < lo + size:
            return
        span = last - first + 1
        if size:
            span = max(span, size + size // 2)
            first = first if first < lo else lo  # grow upwards unless ids below the range came
        grown = np.full(span, -1, dtype=np.int64)
        if size:
            grown[lo - first:lo - first + size] = self.where[code]
        self.where[code], self.lo[code] = grown, first

    def newest_rows(self, entries: dict[str, _CachedFile], wanted: list[tuple[int, np.ndarray]]
                    ) -> tuple[list[tuple[_CachedFile, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """(file, positions) of the latest rows of the wanted keys (side code, sorted distinct
        ids), one row per key, and those keys' (side codes, ids) in the same order (`_gather`
        need not read them); ``entries``: the live files by path."""
        parts, codes, found = [], [], []
        for code, ids in wanted:
            lo, where = self.lo[code], self.where[code]
            first, last = np.searchsorted(ids, (lo, lo + len(where)))
            ids = ids[first:last]
            where = where[ids - lo]
            held = where >= 0
            ids, where = ids[held], where[held]
            if not len(where):
                continue
            # grouped by file (a radix sort of int16 places); stable, so each file's positions
            # stay in id order, which is its row order
            place = (where >> 32).astype(np.int16)
            order = np.argsort(place, kind="stable")
            place, ids = place[order], ids[order]
            rows = where[order] & 0xFFFFFFFF
            cuts = np.flatnonzero(place[1:] != place[:-1]) + 1
            for start, stop in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(place)]))):
                parts.append((entries[self.paths[place[start]]], rows[start:stop]))
            found.append(ids)
            codes.append(np.full(len(ids), code, dtype=np.int8))
        return parts, (_cat(codes, np.int8), _cat(found, np.int64))


def _values(column: pa.ChunkedArray, fill) -> tuple[np.ndarray, np.ndarray | None]:
    """A nullable numeric column as (values with ``fill`` for nulls, validity or None)."""
    array = column.chunk(0) if column.num_chunks else pa.array([], column.type)
    if array.null_count == 0:
        return array.to_numpy(zero_copy_only=False), None
    return array.fill_null(fill).to_numpy(zero_copy_only=False), array.is_valid().to_numpy(zero_copy_only=False)


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _gather(parts: list[tuple[_CachedFile, np.ndarray]], keys: tuple[np.ndarray, np.ndarray] | None = None) -> pa.Table:
    """The rows at the given positions of each cached file, as one STORED_SCHEMA table;
    ``keys``: their (side codes, ids) when the caller knows them (each a random read of the
    file's arrays otherwise: ~1.5 ms for 62k rows of a 10M-user store)."""
    def nullable(values, valid_of):
        if all(valid_of(e) is None for e, _ in parts):
            return pa.array(values)
        valid = _cat([valid_of(e)[r] if valid_of(e) is not None else np.ones(len(r), bool) for e, r in parts], bool)
        return pa.array(values, mask=~valid)

    if keys is None:
        keys = _cat([e.codes[r] for e, r in parts], np.int8), _cat([e.keys[r] for e, r in parts], np.int64)
    side, ids = pa.array(_SIDES).take(pa.array(keys[0])), pa.array(keys[1])
    version, n, bias = (_cat([getattr(e, field)[r] for e, r in parts], dtype)
                        for field, dtype in (("version", np.int64), ("n", np.int64), ("bias", np.float64)))
    version, n, bias = pa.array(version), nullable(n, lambda e: e.n_valid), nullable(bias, lambda e: e.bias_valid)
    ranks = {e.vectors.shape[1] if e.vectors is not None else -1 for e, r in parts if len(r)}
    if len(ranks) <= 1 and -1 not in ranks:
        rank = ranks.pop() if ranks else 0
        valid = _cat([np.ones(len(r), bool) if e.all_vectors_valid else e.vector_valid[r] for e, r in parts], bool)
        # np.take, not e.vectors[r]: numpy's fancy indexing of a 2-d array copies row by row
        # (60k rows of a 10M-row file: ~9 ms against ~2 ms)
        taken = [np.take(e.vectors, r, axis=0) for e, r in parts if len(r)]
        dense = np.concatenate(taken) if taken else np.zeros((0, rank), np.float32)
        offsets = np.zeros(len(valid) + 1, dtype=np.int32)
        np.cumsum(valid * rank, out=offsets[1:])
        values = dense if valid.all() else dense[valid]
        vector = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)),
                                          type=STORED_SCHEMA.field("vector").type, mask=pa.array(~valid))
    else:  # vectors of different lengths: Arrow takes, per file
        pieces = []
        for e, r in parts:
            if e.vector_list is not None:
                pieces.append(e.vector_list.take(pa.array(r)))
            else:
                pieces.append(_gather([(e, r)])["vector"].chunk(0) if len(r) else
                              pa.array([], STORED_SCHEMA.field("vector").type))
        vector = pa.concat_arrays(pieces)
    return pa.Table.from_arrays([side, ids, version, n, bias, vector], schema=STORED_SCHEMA)


class FactorFileCache:
    """Byte-bounded LRU cache of decoded ``factors`` data files (immutable once written)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._files: OrderedDict[str, _CachedFile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._uncacheable: set[str] = set()
        self.hits = self.misses = self.adopted = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def holds(self, path: str) -> bool:
        return path in self._files

    def get(self, path: str, decoded: Future | None = None) -> _CachedFile | None:
        """The decoded file (read on a miss, or ``decoded``: the file's rows, known to the
        caller and decoded by `decode_rows` in the background), or None if it cannot be cached
        (too big, or a schema this reader does not know): the caller then uses the store's
        reader."""
        with self._lock:
            entry = self._files.get(path)
            if entry is not None:
                self._files.move_to_end(path)
                self.hits += 1
                return entry
            if path in self._uncacheable:
                return None
        if decoded is None:
            self.misses += 1  # files read from disk
            entry = decode_rows(path)
        else:
            self.adopted += 1
            entry = decoded.result()
        if entry is None or entry.nbytes > self.max_bytes:
            with self._lock:
                self._uncacheable.add(path)
            return None
        with self._lock:
            if path not in self._files:
                self._files[path] = entry
                self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and len(self._files) > 1:
                _, old = self._files.popitem(last=False)
                self._bytes -= old.nbytes
        return entry

    def retain(self, folder: str, live: set[str]) -> None:
        """Drop the cached files under ``folder`` that are no longer live (e.g. replaced by a
        compaction), so a model's old files do not wait for the LRU to push them out."""
        with self._lock:
            for path in [p for p in self._files if folder in p and p not in live]:
                self._bytes -= self._files.pop(path).nbytes

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._uncacheable.clear()
            self._bytes = 0


def stored_rank(rows: pa.Table, model_id: str, rank: int | None = None) -> int:
    """The length of the stored vectors in ``rows``, which the query is written out for (1
    when there are none, ``rank`` if given). Lengths that differ from each other or from
    ``rank`` are refused: the query would read only the first components of a longer vector."""
    low, high = vector_lengths(rows["vector"])
    if low is None:
        return rank or 1
    if low != high or (rank is not None and low != rank):
        expected = f", but the model's rank is {rank}" if rank is not None else ""
        raise ValueError(f"model {model_id!r}: stored vectors have length {low}..{high}{expected}")
    return low


def decode_rows(rows: pa.Table | str) -> _CachedFile | None:
    """A factors file's rows (or the path of the file) as a `_CachedFile`, or None if this
    reader does not know their schema."""
    try:
        if isinstance(rows, str):
            rows = pq.read_table(rows, columns=STORED_COLUMNS)
        return _CachedFile(rows.select(STORED_COLUMNS).cast(STORED_SCHEMA))
    except (KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _sorted_ids(ids) -> np.ndarray | None:
    """Sorted distinct ids (sort + mask: many times faster than np.unique on 10^5 ids)."""
    if ids is None:
        return None
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None, cache_bytes: int | None = None, prepared: bool = True):
        """``prepared``: run each query prepared once (`PreparedQueries`); False plans it
        afresh for every step (same results: the tests compare the two)."""
        self.prepared = bool(prepared)
        self.con = duckdb.connect()
        # No query of the engine needs DuckDB's row order (rows are keyed, scores carry their
        # rating_seq): without it the step's materialized CTEs and its result are built in
        # parallel. 100,000-rating step query: p50 102 -> 71 ms (docs/streaming_benchmark.md).
        self.con.execute("SET preserve_insertion_order = false")
        register_functions(self.con)
        self._local = threading.local()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if cache_bytes is None:
            cache_bytes = int(os.environ.get("STREAMING_ALS_DUCKDB_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        self.cache = FactorFileCache(cache_bytes) if cache_bytes > 0 else None
        # model_id: the rows of its last step and their decoding (`_own_file`)
        self._stepped: dict[str, tuple[pa.Table, Future]] = {}
        self._indexes: dict[str, LatestRowIndex] = {}  # model_id: where its keys' latest rows are
        self._unindexable: dict[str, frozenset[str]] = {}  # model_id: live files no index could be built for
        self._index_lock = threading.Lock()
        # Decodes a step's rows while the caller checks and commits them: delta-rs writes the
        # file without the GIL, so the decode is off the critical path (measured on a 10M-user
        # store's 62k new rows: commit 42 ms + decode 26 ms one after the other, 49 ms at once).
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streaming-als-decode")

    # ------------------------------------------------------------------ reading stored factors
    def stored_factor_rows(self, warehouse, model_id: str, user_ids=None, item_ids=None,
                           version: int | None = None) -> pa.Table:
        """The model's stored rows (side, id, version, n, bias, vector) of these users and
        items (None: all of that side) plus its global row(s), as of ``version`` (None:
        latest): from the cache of decoded files when it can (the latest version, by number
        or None; a local store), else `Warehouse.factor_rows`. Either way the step computes
        the same result."""
        return next(iter(self._stored_relation(warehouse, model_id, user_ids, item_ids, version).values()))

    def _stored_relation(self, warehouse, model_id: str, user_ids, item_ids, version: int | None) -> dict[str, pa.Table]:
        """`stored_factor_rows` as the relation the sql/ files read: ``latest_factors`` when
        they hold one row per key (the cache's lookup found no key twice), else
        ``stored_factors`` (the step file `base.LATEST_STORED_FILE` keeps each key's latest)."""
        cached = self._cached_factor_rows(warehouse, model_id, user_ids, item_ids, version)
        if cached is None:
            return {"stored_factors": warehouse.factor_rows(model_id, user_ids, item_ids, version)}
        rows, one_per_key = cached
        return {"latest_factors" if one_per_key else "stored_factors": rows}

    def _cached_factor_rows(self, warehouse, model_id: str, user_ids, item_ids,
                            version: int | None = None) -> tuple[pa.Table, bool] | None:
        """The step's stored rows from the cache: the rows of the batch's users and items in
        the newest of the model's live files holding each (`_newest_rows`), and the model's
        latest global row (the step keeps only the latest row per key, so older rows change
        nothing); and whether that is one row per key. None: use the store's reader, also
        for a ``version`` that is not the model's latest (time travel). The latest one asked
        for by number is the usual holdout evaluation, right after the step committed it
        (a Delta read of the store: ~45 ms per 1,000-rating version of the demo)."""
        if self.cache is None or not getattr(warehouse, "is_local", False):
            return None
        check_model_id(model_id)
        dt = warehouse.table("factors")
        if dt is None:
            return None
        if not is_plain_parquet(dt):  # deletion vectors, column mapping...: the files alone are not the table
            return None
        folder = f"/model_id={model_id}/"  # delta-rs and the Spark engine write Hive-style partition folders
        local = warehouse.local_file_paths("factors", dt)
        if None in local:  # files outside the table folder: the store's reader resolves them
            return None
        paths = [p for p in local if folder in p]
        if version is not None and version != warehouse.current_version(model_id):
            return None
        self.cache.retain(folder, set(paths))
        own = self._own_file(warehouse, dt, model_id, paths)
        entries = []
        for path in paths:
            entry = self.cache.get(path, own[1] if own is not None and own[0] == path else None)
            if entry is None:
                return None
            entries.append(entry)
        sides = ((0, user_ids), (1, item_ids))
        wanted = [(code, _sorted_ids(ids)) for code, ids in sides if ids is not None]
        keys = None  # (side codes, ids) of parts' rows, when known
        with self._index_lock:  # another thread may extend the model's index for a newer snapshot
            index = self._latest_index(model_id, paths, entries)
            if index is not None:
                (parts, keys), one_per_key = index.newest_rows(dict(zip(paths, entries)), wanted), True
        if index is None:
            parts, one_per_key = _newest_rows(entries, wanted)
        for code in [code for code, ids in sides if ids is None]:  # every key of that side
            parts += [(e, np.arange(e.bounds[code], e.bounds[code + 1])) for e in entries if e.bounds[code + 1] > e.bounds[code]]
            one_per_key, keys = False, None
        latest = None
        for entry in entries:
            glob = entry.latest_global()
            if glob is not None and (latest is None or glob[0] > latest[0]):
                latest = (glob[0], entry, glob[1])
        if latest is not None:
            parts.append((latest[1], np.array([latest[2]], dtype=np.int64)))
            if keys is not None:
                keys = np.append(keys[0], np.int8(2)), np.append(keys[1], latest[1].keys[latest[2]])
        return _gather(parts, keys), one_per_key

    def _latest_index(self, model_id: str, paths: list[str], entries: list[_CachedFile]) -> LatestRowIndex | None:
        """The model's `LatestRowIndex` for these live files: the last one, extended by the
        files added since (a step's), or built afresh when files went (or None)."""
        live = set(paths)
        index = self._indexes.get(model_id)
        if index is not None and index.place.keys() <= live:
            new = [(p, e) for p, e in zip(paths, entries) if p not in index.place]
            if not new or index.extend([p for p, _ in new], [e for _, e in new]):
                return index
        # Files no index could be built for are tried again only once one of them has gone
        # (a compaction): newer files do not undo a key held twice in a layer, and a new
        # attempt would cost up to a pass over the whole store at every step.
        failed = self._unindexable.get(model_id)
        if failed is not None and failed <= live:
            return None
        index = LatestRowIndex.build(paths, entries)
        if index is None:
            self._indexes.pop(model_id, None)
            self._unindexable[model_id] = frozenset(paths)
        else:
            self._indexes[model_id] = index
            self._unindexable.pop(model_id, None)
        return index

    def _own_file(self, warehouse, dt, model_id: str, paths: list[str]) -> tuple[str, Future] | None:
        """(path, its rows being decoded) of the file the model's last step here was committed
        as, if it is a live file not cached yet: decoded from the step's rows instead of read
        back (a 100,000-rating step's file: ~8-15 ms of Parquet reading). It is that file only if its
        Delta statistics say so: the same row count, version, batch and id range (a step's
        rows are a function of the batch and the version before, so another writer's file
        with those statistics holds the same rows)."""
        rows, decoded = self._stepped.pop(model_id, (None, None))
        new = {p for p in paths if not self.cache.holds(p)}
        if rows is None or not new or rows.num_rows == 0:
            return None
        actions = warehouse.add_actions("factors", dt)
        wanted = {"num_records": rows.num_rows, **{f"{bound}.{column}": value for column in ("version", "batch_seq")
                                                   for bound in ("min", "max")
                                                   for value in [rows[column][0].as_py()]},
                  "min.id": pc.min(rows["id"]).as_py(), "max.id": pc.max(rows["id"]).as_py()}
        if not set(wanted) <= set(actions.column_names):
            return None
        for at, path in enumerate(warehouse.local_file_paths("factors", dt)):
            if path in new and all(actions[column][at].as_py() == value for column, value in wanted.items()):
                return path, decoded
        return None

    # ------------------------------------------------------------------ running sql/ files
    def _local_state(self):
        """This thread's cursor and prepared queries (a DuckDB connection object is not safe
        across threads)."""
        local = self._local
        if getattr(local, "cursor", None) is None:
            local.cursor = self.con.cursor()
            local.prepared = PreparedQueries(self.con)
        return local

    def _check_relations(self, relations: dict[str, pa.Table]) -> None:
        unknown = set(relations) - set(RELATION_NAMES)
        if unknown:
            raise ValueError(f"no relation named {sorted(unknown)} in the sql/ files")

    def _run_query(self, relations: dict[str, pa.Table], query: str) -> pa.Table:
        """Run one query over the relations (Arrow tables by the names the sql/ files use)."""
        self._check_relations(relations)
        return _execute(self._local_state().cursor, query, **relations)

    def _run_prepared(self, relations: dict[str, pa.Table], query: str) -> pa.Table:
        """`_run_query` with the query prepared once (`PreparedQueries`)."""
        self._check_relations(relations)
        return self._local_state().prepared.run(relations, query)

    def _run_step_query(self, relations: dict[str, pa.Table], query: str) -> pa.Table:
        run = self._run_prepared if self.prepared else self._run_query
        return run(relations, query)

    def _run(self, relations: dict[str, pa.Table], steps: list[tuple[str, str]], rank: int) -> pa.Table:
        """Run a chain of step files as one query: each file becomes a CTE named after the
        relation it defines (one round trip; DuckDB plans the chain at once)."""
        return self._run_step_query(relations, chained_query(steps, rank))

    def step(self, warehouse, model: ModelSpec, batch: pa.Table, new_version: int, batch_seq: int | None,
             clip: tuple[float, float]) -> StepResult:
        ratings = batch_relation(batch)
        stored = self._stored_relation(warehouse, model.model_id, ratings["user_id"].to_numpy(),
                                       ratings["item_id"].to_numpy(), None)
        stored_rank(next(iter(stored.values())), model.model_id, model.params.rank)
        relations = {
            **stored,
            "batch_ratings": ratings,
            "step_params": model.step_params(new_version, batch_seq),
            "score_params": score_params(clip),
        }
        query = step_and_score_query(model.params.rank, latest_only="latest_factors" in stored)
        out = self._run_step_query(relations, query)
        rows, scores = split_rows_and_scores(out)
        if self.cache is not None:
            # the rows of the file its commit will write, decoded while the caller commits them
            self._stepped[model.model_id] = (rows, self._decoder.submit(decode_rows, rows))
        prequential = in_rating_order(scores)
        return StepResult(rows=rows, prequential=prequential)

    def score(self, warehouse, model_id: str, ratings: pa.Table, version: int | None,
              clip: tuple[float, float]) -> pa.Table:
        relation = batch_relation(ratings)
        stored = self._stored_relation(warehouse, model_id, relation["user_id"].to_numpy(),
                                       relation["item_id"].to_numpy(), version)
        files = from_latest_rows(SCORE_FILES) if "latest_factors" in stored else SCORE_FILES
        rank = stored_rank(next(iter(stored.values())), model_id)
        scores = self._run({**stored, "ratings_to_score": relation, "score_params": score_params(clip)}, files, rank)
        return in_rating_order(scores)  # DuckDB keeps no row order here (see __init__)

    def close(self) -> None:
        self._decoder.shutdown(wait=True)
        self._stepped.clear()
        self._indexes.clear()
        self._unindexable.clear()
        if getattr(self._local, "cursor", None) is not None:
            self._local.prepared.close()
            self._local.cursor.close()
        self._local.cursor = self._local.prepared = None
        self.con.close()
        if self.cache is not None:
            self.cache.clear()
