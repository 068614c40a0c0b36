"""Compaction of the append-only tables: ``ratings``, ``batches``, ``rejected_ratings``,
``evaluations`` and ``compactions`` get one small file per ingested batch or applied version.

Why: a delta-rs (1.6) commit costs time in proportion to the table's live files (measured:
an append of 1,000 ratings takes ~20 ms at 10 files, ~85 ms at 600, ~130 ms at 1,000), so
without this an endless stream would ingest ever more slowly. `compact_small_files` merges
a table's small files (below ``SMALL_FILE_BYTES``) into one file in a single Delta commit
that removes them (``dataChange = false``: the rows, the app transactions and the time
travel history stay as they were). It reads only the small files, so its cost is O(rows
since the last compaction), and a big file written earlier is never rewritten.

``ratings`` rows are sorted by ``batch_id`` (stably, so each batch keeps its row order) and
written in small row groups: a merged file spans every batch id at file level, but its row
groups' statistics let a reader of one batch (`Warehouse.batch_ratings`) decode one or two
row groups of it. The other tables are read whole into memory anyway: their rows keep file
order.

A local store writes the merged file itself (pyarrow) and has delta-rs commit the swap with
``create_write_transaction``; an object store uses delta-rs's own ``optimize.compact``.
A crash before the commit leaves an unreferenced file (invisible; `vacuum` removes it).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.transaction import AddAction, RemoveAction

from als_core.store.schemas import TABLES
from als_core.store.warehouse import Warehouse, _local_path, is_plain_parquet, retry_commit

APPEND_TABLES = ("ratings", "batches", "rejected_ratings", "evaluations", "compactions")
SMALL_FILE_BYTES = 4 << 20  # files below this are merged (a 1,000-rating batch file is ~16 KB)
RATINGS_ROW_GROUP = 4_096  # rows per row group of a merged ratings file (what one batch read decodes)


def small_files(warehouse: Warehouse, name: str) -> list[tuple[str, int]]:
    """(path relative to the table, size) of the table's live files below SMALL_FILE_BYTES,
    in commit order (oldest first)."""
    dt = warehouse.table(name)
    if dt is None:
        return []
    actions = pa.table(dt.get_add_actions(flatten=False)).select(["path", "size_bytes", "modification_time"])
    actions = actions.sort_by([("modification_time", "ascending"), ("path", "ascending")])
    return [(p, s) for p, s in zip(actions["path"].to_pylist(), actions["size_bytes"].to_pylist())
            if s < SMALL_FILE_BYTES]


def compact_small_files(warehouse: Warehouse, name: str, min_files: int = 2) -> dict:
    """Merge table ``name``'s small files into one (see the module docstring) when it has at
    least ``min_files`` of them. Returns {table, files_merged, rows, seconds} (files_merged 0:
    nothing to do; rows None when delta-rs's optimize did the work)."""
    if name not in APPEND_TABLES:
        raise ValueError(f"{name!r} is not an append-only table ({', '.join(APPEND_TABLES)}); "
                         "factors are compacted per model by compact_factors")
    started = time.perf_counter()
    outcome = {"table": name, "files_merged": 0, "rows": 0}
    with warehouse.lock(f"compact-{name}"):
        dt = warehouse.table(name)
        if dt is not None and len(small_files(warehouse, name)) >= max(2, min_files):
            merge = _merge_local if warehouse.is_local and is_plain_parquet(dt) else _merge_with_delta_rs
            outcome.update(merge(warehouse, name))
    return {**outcome, "seconds": round(time.perf_counter() - started, 3)}


def compact_store_tables(warehouse: Warehouse, min_files: int = 2) -> list[dict]:
    """`compact_small_files` on every append-only table that has ``min_files`` small files."""
    return [compact_small_files(warehouse, name, min_files) for name in APPEND_TABLES]


def _merge_with_delta_rs(warehouse: Warehouse, name: str) -> dict:
    """delta-rs's own compaction (any storage; rows keep no particular order)."""
    metrics = retry_commit(lambda: warehouse.table(name).optimize.compact(target_size=SMALL_FILE_BYTES * 16))
    return {"files_merged": int(metrics.get("numFilesRemoved", 0)), "rows": None}


def _merge_local(warehouse: Warehouse, name: str) -> dict:
    """Write the small files' rows as one file and commit the swap (retried after a conflicting
    concurrent commit: the small files are listed again and the merged file rewritten)."""
    root = _local_path(warehouse.table_uri(name))
    written: list[str] = []

    def drop_uncommitted() -> None:
        """Delete what this merge wrote unless the table references it: an error raised after
        the commit was durable (say, by a post-commit hook) must not delete the table's rows."""
        live = {uri.rsplit("/", 1)[-1] for uri in warehouse.table(name).file_uris()} if written else set()
        for relative in written:
            if relative not in live:
                (root / relative).unlink(missing_ok=True)
        written.clear()

    def swap() -> dict:
        drop_uncommitted()  # a previous attempt's file
        files = small_files(warehouse, name)
        if len(files) < 2:
            return {"files_merged": 0, "rows": 0}
        relative, rows = _write_merged(root, name, [p for p, _ in files])
        written.append(relative)
        stat = (root / relative).stat()
        now_ms = int(time.time() * 1000)
        actions = [AddAction(path=relative, size=stat.st_size, partition_values={}, data_change=False,
                             modification_time=int(stat.st_mtime * 1000), stats=json.dumps(file_statistics(rows)))]
        actions += [RemoveAction(path=p, data_change=False, deletion_timestamp=now_ms, size=size, partition_values={})
                    for p, size in files]
        warehouse.table(name).create_write_transaction(actions, mode="append", schema=TABLES[name][0])
        written.clear()  # committed: the file is the table's now
        return {"files_merged": len(files), "rows": rows.num_rows}

    try:
        return retry_commit(swap)
    finally:
        drop_uncommitted()


def _write_merged(root, name: str, relatives: list[str]) -> tuple[str, pa.Table]:
    """Write the rows of the given files (in that order) as one new file; (relative path, rows)."""
    schema = TABLES[name][0]
    rows = pa.concat_tables([pq.read_table(root / p, schema=schema) for p in relatives])
    row_group = None
    if name == "ratings":  # stable: each batch keeps its arrival order
        rows = rows.take(pc.sort_indices(rows, [("batch_id", "ascending")]))
        row_group = RATINGS_ROW_GROUP
    relative = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    pq.write_table(rows, root / relative, compression="snappy", row_group_size=row_group)
    return relative, rows


def file_statistics(rows: pa.Table) -> dict:
    """Delta statistics of one data file (``numRecords``, ``minValues``, ``maxValues``,
    ``nullCount``) for its scalar columns, in delta-rs's format. Every scalar column needs
    them: delta-rs turns a file's statistics into a pyarrow filter expression, and a column
    without them would make any filter on it drop the file. Timestamps are written in
    milliseconds, as Delta does: the minimum rounded down, the maximum up, so both stay bounds.

    >>> file_statistics(pa.table({"id": [3, 1, None], "ok": [True, False, True]}))
    {'numRecords': 3, 'minValues': {'id': 1, 'ok': False}, 'maxValues': {'id': 3, 'ok': True}, 'nullCount': {'id': 1, 'ok': 0}}
    """
    mins, maxs, nulls = {}, {}, {}
    for field in rows.schema:
        kind = field.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
                or pa.types.is_boolean(kind) or pa.types.is_timestamp(kind)):
            continue  # lists (factors' vector): no statistics, as delta-rs
        nulls[field.name] = rows[field.name].null_count
        bounds = pc.min_max(rows[field.name])
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low is None:
            continue
        if pa.types.is_timestamp(kind):
            low = _millis(low, up=False)
            high = _millis(high, up=True)
        mins[field.name], maxs[field.name] = low, high
    return {"numRecords": rows.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _millis(moment: datetime, up: bool) -> str:
    """A timestamp as Delta's statistics write it (UTC, milliseconds), rounded down or up."""
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if up and moment.microsecond % 1000:
        moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
