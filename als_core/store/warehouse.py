"""The Delta factor store: every table of DESIGN.md under one warehouse URI.

delta-rs (``deltalake``) is the only writer. Reads go through ``to_pyarrow_dataset()``, whose
fragments carry each file's min/max statistics, so a filter on ``id`` skips files that cannot
match. On a local store the per-batch reads avoid anything that grows with the table's file
count: one batch's ratings come from the files the Delta statistics allow (`read_pruned`,
over the add actions kept per snapshot), the small tables (ledger, models, ...) from an
in-memory copy extended file by file, a model's current version from the statistics, app
transaction versions from a copy kept per table version, and a cached snapshot is refreshed
only when a newer log entry exists.

Exactly-once:
* a factor version is one Delta commit holding the changed rows plus the app transaction
  ``(app_id=model_id, version=batch seq)``; "already applied?" is
  ``transaction_version(model_id) >= seq``;
* an ingested file's ratings commit carries the app transaction ``(app_id=batch_id)``, and the
  ledger row (``batches``) is written last: a rerun after a crash skips what was committed.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from deltalake import ColumnProperties, CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from als_core.store.schemas import TABLES, check_model_id

DEFAULT_WAREHOUSE = "./warehouse"
# Tables small enough to keep in memory (one row per batch, model, version or compaction).
SMALL_TABLES = frozenset({"batches", "models", "compactions", "evaluations"})
COMMIT_ATTEMPTS = 8


# Delta table property: how long log entries (and so time travel) are kept. Each commit lists
# the log folder, so a long retention makes every commit slower as versions accumulate.
LOG_RETENTION_PROPERTY = "delta.logRetentionDuration"
DEFAULT_LOG_RETENTION = "interval 30 days"  # Delta's default when the property is unset
_INTERVAL = re.compile(r"^(?:interval\s+)?(\d+)\s*(second|minute|hour|day|week)s?$", re.IGNORECASE)


def writer_properties(name: str, max_row_group_size: int | None = None) -> WriterProperties | None:
    """How rows of table ``name`` are written (None: delta-rs's defaults). Factor rows are
    Snappy-compressed without dictionary encoding: vector components and biases are distinct
    floats, so a dictionary never pays (measured on 40,000 rows of rank 10: 58 ms to write
    and 2.7 MB with dictionaries, 28 ms and 2.1 MB without)."""
    if name != "factors":
        return None if max_row_group_size is None else WriterProperties(max_row_group_size=max_row_group_size)
    return WriterProperties(compression="SNAPPY", max_row_group_size=max_row_group_size,
                            default_column_properties=ColumnProperties(dictionary_enabled=False))


def log_retention_of(dt: DeltaTable) -> str:
    """A Delta table's log retention (Delta's default when the property is unset)."""
    return dt.metadata().configuration.get(LOG_RETENTION_PROPERTY, DEFAULT_LOG_RETENTION)


def delta_interval(duration: str) -> str:
    """A duration as a Delta interval property value.

    >>> delta_interval("7 days"), delta_interval("interval 1 hour"), delta_interval("30 minutes")
    ('interval 7 days', 'interval 1 hours', 'interval 30 minutes')
    """
    match = _INTERVAL.match(str(duration).strip())
    if not match:
        raise StoreError(f"log retention {duration!r}: expected a duration such as '7 days', '12 hours' or "
                         "'30 minutes' (units: second, minute, hour, day, week)")
    return f"interval {int(match.group(1))} {match.group(2).lower()}s"


class StoreError(RuntimeError):
    """The store refused an operation (bad argument, or a state it cannot safely handle)."""


def warehouse_uri(uri: str | os.PathLike | None = None) -> str:
    """The warehouse URI: the argument, else $STREAMING_ALS_WAREHOUSE, else ./warehouse."""
    return str(uri or os.environ.get("STREAMING_ALS_WAREHOUSE") or DEFAULT_WAREHOUSE)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _local_path(uri: str) -> Path:
    """A local table URI (plain path or file://) as a path."""
    return Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)


def _max_version_from_stats(actions: pa.Table, model_id: str) -> tuple[bool, int | None]:
    """The largest ``version`` in a model's ``factors`` files per the Delta statistics
    (``actions``: the table's add actions; no data file is opened): (True, None) when the
    model has no file; (False, ...) when some of its files have no statistics, so the answer
    is only a lower bound."""
    if not {"max.version", "partition.model_id"} <= set(actions.column_names):
        return False, None
    mine = actions.filter(pc.equal(actions["partition.model_id"], model_id))["max.version"]
    return mine.null_count == 0, (pc.max(mine).as_py() if len(mine) else None)


def _may_hold(actions: pa.Table, column: str, value) -> tuple[list[bool], list[bool]] | None:
    """Per file (row of ``actions``, a table's add actions): whether it may hold rows with
    ``column == value``, and whether all its rows surely have it. Decided by the partition
    value, or by the min/max statistics (a file without them may hold anything). A string
    statistic cut short by its writer is still safe: a shortened minimum is a prefix of the
    true one, a shortened maximum is rounded up or is a prefix of the value; and a file is
    only "sure" when min = max = value exactly and no row is null. None: the actions say
    nothing about the column."""
    if f"partition.{column}" in actions.column_names:
        same = [v == value for v in actions[f"partition.{column}"].to_pylist()]
        return same, same
    if f"min.{column}" not in actions.column_names or f"max.{column}" not in actions.column_names:
        return None
    lows, highs = actions[f"min.{column}"].to_pylist(), actions[f"max.{column}"].to_pylist()
    nulls = actions[f"null_count.{column}"].to_pylist() if f"null_count.{column}" in actions.column_names \
        else [None] * len(lows)
    shortened = isinstance(value, str)
    may = [low is None or high is None or (low <= value and (value <= high or (shortened and value.startswith(high))))
           for low, high in zip(lows, highs)]
    sure = [low == value and high == value and nulls_ == 0 for low, high, nulls_ in zip(lows, highs, nulls)]
    return may, sure


def _all_of(conditions: list[pds.Expression]) -> pds.Expression | None:
    """The conjunction of filter expressions (None: no condition)."""
    out = None
    for condition in conditions:
        out = condition if out is None else out & condition
    return out


def retry_commit(fn, attempts: int = COMMIT_ATTEMPTS, base_delay: float = 0.05):
    """Run ``fn`` again when delta-rs reports a conflicting concurrent commit (bounded,
    exponential backoff with jitter). ``fn`` must re-read what it depends on."""
    rng = np.random.default_rng()
    for attempt in range(attempts):
        try:
            return fn()
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + rng.random()))


def is_plain_parquet(dt: DeltaTable) -> bool:
    """Whether a Delta table's data files can be read as plain Parquet: reader version 1 and
    no deletion vectors (no column mapping either, which needs a higher reader version)."""
    protocol = dt.protocol()
    return protocol.min_reader_version == 1 and "deletionVectors" not in (protocol.reader_features or [])


def check_plain_parquet(dt: DeltaTable, where: str) -> None:
    """Refuse a Delta table whose data files are not plain Parquet (`is_plain_parquet`).
    Engines without a Delta reader (Spark without delta-spark) read and write its files
    directly, which is only correct for reader version 1 tables without deletion vectors."""
    if not is_plain_parquet(dt):
        protocol = dt.protocol()
        features = list(protocol.reader_features or [])
        raise StoreError(
            f"the Delta table at {where} needs reader version {protocol.min_reader_version} (reader features: "
            f"{', '.join(features) or 'none'}); its data files cannot be read as plain Parquet, which engines "
            "without a Delta reader (Spark without delta-spark) rely on. Use reader version 1 tables without "
            "deletion vectors, e.g. rewrite the table with delta-rs (write_deltalake mode='overwrite') into a "
            "new warehouse.")


@dataclass
class Warehouse:
    uri: str
    storage_options: dict[str, str] | None = None

    def __init__(self, uri: str | os.PathLike | None = None, storage_options: dict[str, str] | None = None):
        self.uri = warehouse_uri(uri)
        self.storage_options = storage_options
        self._tables: dict[str, DeltaTable] = {}  # latest snapshots, refreshed incrementally
        self._small: dict[str, tuple[int, set[str], pa.Table]] = {}  # SMALL_TABLES: (version, files, rows)
        # latest snapshot's files: (version, (add actions, their local paths))
        self._actions: dict[str, tuple[int, tuple[pa.Table, list[str | None]]]] = {}
        self._transactions: dict[tuple[str, str], tuple[int, int | None]] = {}  # (table, app_id): (version, txn)
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ basics
    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    def table_uri(self, name: str) -> str:
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}")
        return f"{self.uri.rstrip('/')}/{name}"

    def table(self, name: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table (latest, or as of a table version), or None if never written.
        Latest snapshots are cached and brought up to date incrementally (only new log
        entries are read), which keeps per-batch overhead flat as history grows. A table
        version whose log entries were cleaned up (`set_log_retention`) raises StoreError."""
        if version is not None:
            return self._table_at(name, version)
        try:
            cached = self._tables.get(name)
            if cached is None:
                cached = self._tables[name] = DeltaTable(self.table_uri(name), storage_options=self.storage_options)
            elif not self._is_current(cached):
                cached.update_incremental()
            return cached
        except TableNotFoundError:
            return None

    def _table_at(self, name: str, version: int) -> DeltaTable | None:
        """The table as of ``version``; delta-rs says "not found" both for a table never written
        and for a version whose log is gone, and the latter must never be read as empty."""
        try:
            return DeltaTable(self.table_uri(name), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            latest = self.table(name)
            if latest is None:
                return None
            if version > latest.version():
                raise StoreError(f"the {name!r} table has versions up to {latest.version()}, not {version}") from None
            raise StoreError(
                f"version {version} of the {name!r} table is no longer readable: its Delta log entries were "
                f"cleaned up (log retention: {log_retention_of(latest)}; the table is at version {latest.version()}). "
                "Model versions older than the last compaction before that point cannot be read or rolled "
                "back to.") from None

    def _is_current(self, dt: DeltaTable) -> bool:
        """Whether a local table has no commit after ``dt``'s version: every commit writes its
        log entry ``<version>.json``, so one stat replaces a log listing (update_incremental
        costs milliseconds, and a step asks several times). Object stores: always refresh."""
        if not self.is_local:
            return False
        log = _local_path(dt.table_uri) / "_delta_log"
        return not (log / f"{dt.version() + 1:020d}.json").exists()

    def _target(self, name: str):
        """What to hand write_deltalake: the cached table (saves a log replay) or the URI."""
        return self.table(name) or self.table_uri(name)

    def ensure_tables(self) -> None:
        """Create every table that does not exist yet (empty, with its schema)."""
        for name, (schema, partition_by) in TABLES.items():
            if self.table(name) is None:
                try:
                    write_deltalake(self.table_uri(name), schema.empty_table(), mode="ignore",
                                    partition_by=partition_by, storage_options=self.storage_options)
                except Exception:  # a concurrent creator won: fine if the table is there now
                    if self.table(name) is None:
                        raise

    def read(self, name: str, filter: pds.Expression | None = None, columns: list[str] | None = None,
             version: int | None = None) -> pa.Table:
        """Rows of a table (empty table with the schema if it does not exist). The small
        ledger-like tables of a local store are read from an in-memory copy kept up to date
        file by file (`_small_table_rows`)."""
        dt = self.table(name, version)
        schema = TABLES[name][0]
        if dt is None:
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        if version is None and name in SMALL_TABLES and self._plain_local(name, dt):
            rows = self._small_table_rows(name, dt)
            rows = rows.filter(filter) if filter is not None else rows
            return rows.select(columns) if columns else rows
        dataset = dt.to_pyarrow_dataset()
        return dataset.to_table(filter=filter, columns=columns)

    def _plain_local(self, name: str, dt: DeltaTable) -> bool:
        """Whether the table's files can be read directly as Parquet: a local, unpartitioned
        table at reader version 1 (no deletion vectors, no column mapping)."""
        return self.is_local and not TABLES[name][1] and is_plain_parquet(dt)

    def _small_table_rows(self, name: str, dt: DeltaTable) -> pa.Table:
        """Every row of a small table at the snapshot's version. Delta files never change, so
        when the live files are the cached ones plus new ones (appends: the ledger, the
        evaluations) only the new files are read; any removal (an overwrite, e.g. of
        ``models``) reads the table again. Without this, each read of the ledger opened every
        file ever appended to it (one per ingested batch)."""
        version = dt.version()
        cached = self._small.get(name)
        if cached is not None and cached[0] == version:
            return cached[2]
        files = dt.file_uris()
        schema = TABLES[name][0]
        if cached is not None and cached[1] <= set(files):
            new = [f for f in files if f not in cached[1]]
            rows = pa.concat_tables([cached[2], pds.dataset(new, schema=schema, format="parquet").to_table()])
            if rows.num_columns and rows.column(0).num_chunks > 64:  # one chunk per append otherwise
                rows = rows.combine_chunks()
        else:
            rows = pds.dataset(files, schema=schema, format="parquet").to_table()
        self._small[name] = (version, set(files), rows)
        return rows

    def read_pruned(self, name: str, pruning: list[tuple], filter: pds.Expression | None = None,
                    columns: list[str] | None = None) -> pa.Table:
        """Rows of a table with ``column == value`` for every ``(column, "=", value)`` of
        ``pruning`` (and matching ``filter``), reading only the files whose Delta partition values
        and statistics allow them. A local store reads those Parquet files directly: building
        the full pyarrow dataset costs time in proportion to the table's file count, this costs
        O(matching files); and a condition every listed file meets by its statistics (a batch's
        own file: min = max = its batch id) is not evaluated row by row, nor its column read
        unless asked for. Elsewhere it is `read` with the conditions as a filter."""
        if any(op != "=" for _, op, _ in pruning):
            raise ValueError(f"read_pruned takes (column, '=', value) conditions, not {pruning!r}")
        dt = self.table(name)
        schema, partition_by = TABLES[name]
        if dt is None or not self.is_local or not is_plain_parquet(dt):
            conditions = [pc.field(c) == v for c, _, v in pruning] + ([filter] if filter is not None else [])
            return self.read(name, filter=_all_of(conditions), columns=columns)
        files, settled = self._pruned_files(name, dt, pruning)
        conditions = [pc.field(c) == v for c, _, v in pruning if c not in settled]
        conditions += [filter] if filter is not None else []
        partitioning = None
        if partition_by:  # partition values live in the folder names (Hive style), not in the files
            partitioning = pds.partitioning(pa.schema([schema.field(c) for c in partition_by]), flavor="hive")
        dataset = pds.dataset(files, schema=schema, format="parquet", partitioning=partitioning,
                              partition_base_dir=str(_local_path(dt.table_uri)) if partitioning else None)
        return dataset.to_table(filter=_all_of(conditions), columns=columns)

    def add_actions(self, name: str, dt: DeltaTable) -> pa.Table:
        """The add actions (one row per live file: path, partition values, statistics) of a
        snapshot, kept for the latest version: a step reads them several times between commits."""
        return self._snapshot_files(name, dt)[0]

    def local_file_paths(self, name: str, dt: DeltaTable) -> list[str | None]:
        """The local path of each of `add_actions`' files, in its order (None: a file outside
        the table folder, e.g. in a shallow clone, given by a full URI); kept like them."""
        return self._snapshot_files(name, dt)[1]

    def _snapshot_files(self, name: str, dt: DeltaTable) -> tuple[pa.Table, list[str | None]]:
        cached = self._actions.get(name)
        if cached is not None and cached[0] == dt.version() and dt is self._tables.get(name):
            return cached[1]
        actions = pa.table(dt.get_add_actions(flatten=True))
        root = _local_path(dt.table_uri)
        paths = [None if "://" in p else str(root / unquote(p)) for p in actions["path"].to_pylist()]
        if dt is self._tables.get(name):
            self._actions[name] = (dt.version(), (actions, paths))
        return actions, paths

    def _pruned_files(self, name: str, dt: DeltaTable, pruning: list[tuple]) -> tuple[list[str], set[str]]:
        """The local data files that may hold rows matching ``pruning`` (``(column, "=",
        value)`` conditions), from the add actions kept for the version (delta-rs'
        ``file_uris(file_pruning_predicate)`` evaluates its predicate over the whole snapshot
        at every call: ~6 ms at 60 files), and the columns whose condition every one of those
        files meets in every row (partition values; min = max = value without nulls)."""
        actions, local_paths = self._snapshot_files(name, dt)
        keep = [True] * actions.num_rows
        verdicts = {column: _may_hold(actions, column, value) for column, _, value in pruning}
        for may, _ in filter(None, verdicts.values()):
            keep = [k and m for k, m in zip(keep, may)]
        settled = {column for column, verdict in verdicts.items()
                   if verdict is not None and all(sure for sure, k in zip(verdict[1], keep) if k)}
        paths = [p for p, k in zip(local_paths, keep) if k]
        if None in paths:  # files outside the table folder: delta-rs resolves them
            return dt.file_uris(file_pruning_predicate=pruning), set()
        return paths, settled

    def append(self, name: str, rows: pa.Table, txn: tuple[str, int] | None = None) -> None:
        """Append rows (cast to the table's schema), optionally with an app transaction."""
        schema, partition_by = TABLES[name]
        rows = rows.select(schema.names).cast(schema)
        props = CommitProperties(app_transactions=[Transaction(app_id=txn[0], version=txn[1])]) if txn else None
        retry_commit(lambda: write_deltalake(self._target(name), rows, mode="append", partition_by=partition_by,
                                             commit_properties=props, storage_options=self.storage_options,
                                             writer_properties=writer_properties(name)))
        self._committed(name, txn)

    def overwrite(self, name: str, rows: pa.Table, predicate: str | None = None) -> None:
        schema, partition_by = TABLES[name]
        rows = rows.select(schema.names).cast(schema)
        retry_commit(lambda: write_deltalake(self.table_uri(name), rows, mode="overwrite", predicate=predicate,
                                             partition_by=partition_by, storage_options=self.storage_options,
                                             writer_properties=writer_properties(name)))

    def log_retention(self) -> dict[str, str]:
        """Each existing table's log retention (`LOG_RETENTION_PROPERTY`, Delta's default if unset)."""
        tables = {name: self.table(name) for name in TABLES}
        return {name: log_retention_of(dt) for name, dt in tables.items() if dt is not None}

    def set_log_retention(self, duration: str) -> dict[str, str]:
        """Keep every table's Delta log for ``duration`` (e.g. ``"1 day"``); returns the new
        settings. delta-rs deletes older log entries when it writes a checkpoint (every 100
        commits), which keeps the log folder, and with it the cost of each commit, bounded.
        The price: Delta time travel ends there, so a model version older than the last
        compaction before that point can no longer be read or rolled back to."""
        interval = delta_interval(duration)
        self.ensure_tables()
        for name in TABLES:
            def alter(name=name):
                self.table(name).alter.set_table_properties({LOG_RETENTION_PROPERTY: interval})
            retry_commit(alter)
        return self.log_retention()

    def transaction_version(self, name: str, app_id: str) -> int | None:
        """The version of app transaction ``app_id`` in table ``name`` (None: none yet). Kept
        per table version: delta-rs replays the log since the last checkpoint for it (2-8 ms),
        and a step asks before its work and again just before its commit."""
        dt = self.table(name)
        if dt is None:
            return None
        cached = self._transactions.get((name, app_id))
        if cached is not None and cached[0] == dt.version():
            return cached[1]
        value = dt.transaction_version(app_id)
        self._transactions[(name, app_id)] = (dt.version(), value)
        return value

    def _committed(self, name: str, txn: tuple[str, int] | None) -> None:
        """Record our own commit's app transaction for the snapshot it produced (write_deltalake
        moves the cached table to its commit's version): the next "already applied?" needs no
        log replay. Sound because each app id is written under one lock (a model's, a batch's)."""
        dt = self._tables.get(name)
        if txn is not None and dt is not None:
            self._transactions[(name, txn[0])] = (dt.version(), txn[1])

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock among processes sharing a local warehouse (no-op for object
        stores, where Dagster's run concurrency limits and the app transactions serialise)."""
        if not self.is_local:
            yield
            return
        folder = Path(self.uri) / "_locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ ledger and ratings
    def ledger(self) -> pa.Table:
        return self.read("batches").sort_by("seq")

    def batch_record(self, batch_id: str) -> dict | None:
        rows = self.read("batches", filter=pc.field("batch_id") == batch_id).to_pylist()
        return rows[0] if rows else None

    def batch_ratings(self, batch_id: str, holdout: bool | None = None, columns: list[str] | None = None) -> pa.Table:
        """One batch's ratings (file statistics let the reader skip every other batch; a file
        holding only this batch is read without its ``batch_id`` column unless asked for)."""
        f = pc.field("holdout") == holdout if holdout is not None else None
        return self.read_pruned("ratings", [("batch_id", "=", batch_id)], f, columns=columns)

    def holdout_ratings(self) -> pa.Table:
        return self.read("ratings", filter=pc.field("holdout") == True)  # noqa: E712

    # ------------------------------------------------------------------ models
    def models(self, status: str | None = None) -> pa.Table:
        models = self.read("models")
        if status is not None:
            models = models.filter(pc.equal(models["status"], status))
        return models.sort_by("model_id")

    def model_record(self, model_id: str) -> dict:
        check_model_id(model_id)
        rows = self.read("models", filter=pc.field("model_id") == model_id).to_pylist()
        if not rows:
            known = ", ".join(self.models()["model_id"].to_pylist()) or "none"
            raise StoreError(f"no model {model_id!r} in {self.uri} (models: {known})")
        return rows[0]

    def upsert_models(self, rows: list[dict]) -> None:
        """Add or replace model rows (the table is small: read, merge, overwrite, retried)."""
        for row in rows:
            check_model_id(row["model_id"])

        def write():
            current = {r["model_id"]: r for r in self.read("models").to_pylist()}
            for row in rows:
                current[row["model_id"]] = {**current.get(row["model_id"], {}), **row}
            table = pa.Table.from_pylist(list(current.values()), schema=TABLES["models"][0])
            write_deltalake(self.table_uri("models"), table, mode="overwrite", storage_options=self.storage_options)

        with self.lock("models"):
            retry_commit(write)

    # ------------------------------------------------------------------ factors
    def applied_seq(self, model_id: str) -> int:
        """The seq of the last batch applied to the model (0 if none)."""
        return self.transaction_version("factors", check_model_id(model_id)) or 0

    def model_versions(self, model_id: str) -> pa.Table:
        """One row per version: version, batch_seq, n (ratings seen), mu. The global row is
        written by every version and kept by compaction, so this is the version history."""
        rows = self.read_pruned(
            "factors", [("model_id", "=", check_model_id(model_id)), ("side", "=", "global")],
            columns=["version", "batch_seq", "n", "bias"],
        )
        return rows.rename_columns(["version", "batch_seq", "n", "mu"]).sort_by("version")

    def current_version(self, model_id: str) -> int:
        """The model's latest version (0: none). Every version writes rows, so it is the
        largest ``version`` in the model's files: read from the Delta statistics (no data file
        is opened), or from the rows when a file has no statistics."""
        check_model_id(model_id)
        dt = self.table("factors")
        if dt is not None:
            known, latest = _max_version_from_stats(self.add_actions("factors", dt), model_id)
            if known:
                return latest or 0
        versions = self.model_versions(model_id)["version"]
        return int(pc.max(versions).as_py() or 0) if len(versions) else 0

    def _factor_source_version(self, model_id: str, version: int | None) -> int | None:
        """Delta table version to read a model version from: None = latest table, unless
        compaction has since dropped rows that version needs (then: before that compaction)."""
        if version is None:
            return None
        comp = self.read("compactions", filter=(pc.field("model_id") == model_id)
                         & (pc.field("compacted_version") > version))
        if comp.num_rows == 0:
            return None
        first = comp.sort_by("compacted_version").slice(0, 1).to_pylist()[0]
        return int(first["delta_version_before"])

    def factor_rows(self, model_id: str, user_ids=None, item_ids=None, version: int | None = None,
                    include_global: bool = True) -> pa.Table:
        """Stored rows (every version <= ``version``) of the given users and items of a model.
        ``None`` ids mean all of that side. Dedupe to current rows happens in SQL."""
        check_model_id(model_id)
        f_side = []
        for side, ids in (("user", user_ids), ("item", item_ids)):
            cond = pc.field("side") == side
            if ids is not None:
                cond = cond & pc.field("id").isin(pa.array(np.unique(np.asarray(ids, dtype=np.int64))))
            f_side.append(cond)
        if include_global:
            f_side.append(pc.field("side") == "global")
        cond = f_side[0]
        for c in f_side[1:]:
            cond = cond | c
        filt = (pc.field("model_id") == model_id) & cond
        if version is not None:
            filt = filt & (pc.field("version") <= version)
        return self.read("factors", filter=filt, columns=["side", "id", "version", "n", "bias", "vector"],
                         version=self._factor_source_version(model_id, version))

    def factor_file_uris(self, model_id: str, user_ids=None, item_ids=None, version: int | None = None) -> list[str]:
        """Data files of ``factors`` that may hold the model's rows (versions <= ``version``) of
        these users and items (``None``: every key of that side) and of its latest global row,
        for engines that read Parquet directly (Spark). Partition pruning on ``model_id`` plus the
        files' min/max statistics on side, id and version; a superset: filter the rows after
        reading. Absolute URIs: ``file:///...`` for a local warehouse (so a cluster whose default
        file system is HDFS still reads the local disk), the store's own URI otherwise
        (``s3://``, ``gs://``, ``az://``, ``abfss://``...; an engine may map the scheme, e.g. s3 -> s3a).

        Raises StoreError if the table's files are not plain Parquet (reader version > 1, e.g.
        deletion vectors or column mapping): reading the listed files would return wrong rows."""
        check_model_id(model_id)
        dt = self.table("factors", self._factor_source_version(model_id, version))
        if dt is None:
            return []
        check_plain_parquet(dt, f"{self.table_uri('factors')} (Delta version {dt.version()})")
        common = [("model_id", "=", model_id)]
        if version is not None:
            common.append(("version", "<=", int(version)))
        # Every version writes a global row, so the latest one (all a step needs) has the
        # largest version <= ``version``: skip the files of older versions for it.
        latest = _max_version_from_stats(self.add_actions("factors", dt), model_id)[1]
        if latest is not None and version is not None:
            latest = min(int(latest), int(version))
        groups = [common + [("side", "=", "global")] + ([("version", ">=", int(latest))] if latest is not None else [])]
        for side, ids in (("user", user_ids), ("item", item_ids)):
            if ids is None:
                groups.append(common + [("side", "=", side)])
                continue
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            if len(ids):
                groups.append(common + [("side", "=", side), ("id", "in", ids.tolist())])
        uris = dt.file_uris(file_pruning_predicate=groups)
        # delta-rs gives local files as plain absolute paths: make them file:// URIs (not
        # percent-encoded: Hadoop's Path quotes the path itself).
        return [u if "://" in u else "file://" + os.path.abspath(u) for u in uris]

    def commit_factor_version(self, model_id: str, rows: pa.Table, seq: int | None) -> bool:
        """Append one version's rows atomically with the app transaction (model_id, seq).
        Returns False (and writes nothing) if that batch was already applied."""
        check_model_id(model_id)
        schema, partition_by = TABLES["factors"]
        rows = rows.select(schema.names).cast(schema)
        props = CommitProperties(app_transactions=[Transaction(app_id=model_id, version=seq)]) if seq else None

        def write() -> bool:
            if seq and self.applied_seq(model_id) >= seq:
                return False
            write_deltalake(self._target("factors"), rows, mode="append", partition_by=partition_by,
                            commit_properties=props, storage_options=self.storage_options,
                            writer_properties=writer_properties("factors"))
            self._committed("factors", (model_id, seq) if seq else None)
            return True

        return retry_commit(write)


__all__ = ["Warehouse", "writer_properties", "StoreError", "delta_interval", "LOG_RETENTION_PROPERTY", "check_plain_parquet", "is_plain_parquet", "warehouse_uri", "retry_commit", "now_utc", "DEFAULT_WAREHOUSE"]
