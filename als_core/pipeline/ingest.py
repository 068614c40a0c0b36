"""Use case: ingest a rating file (or an Arrow table) as one batch of the stream.

A batch is identified by the hash of its content: ingesting the same content twice is a
no-op. The ratings commit carries the app transaction ``(batch_id, 1)`` and the ledger row is
written last, so a crash at any point leaves either nothing visible or a state a rerun
completes without duplicates. A file that cannot be read raises before anything is written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from als_core.readers import ReadResult, read_ratings
from als_core.schema import DEFAULT_SCALE, REJECT_SCHEMA
from als_core.splits import holdout_mask
from als_core.store.maintenance import compact_store_tables
from als_core.store.warehouse import Warehouse, now_utc

DEFAULT_HOLDOUT_FRACTION = float(os.environ.get("STREAMING_ALS_HOLDOUT", "0.1"))
# Every this many ingested batches, the append-only tables' small files are merged: a Delta
# commit's cost grows with the table's live files (see als_core.store.maintenance).
COMPACT_EVERY = 100


@dataclass(frozen=True)
class IngestOutcome:
    batch_id: str
    seq: int
    source: str
    n_rows: int  # ratings stored (training + holdout)
    n_rejected: int
    n_holdout: int
    already_ingested: bool = False

    def summary(self) -> str:
        if self.already_ingested:
            return f"{self.source}: already ingested as batch {self.seq} ({self.batch_id[:12]}), nothing to do"
        return (f"{self.source}: batch {self.seq} ({self.batch_id[:12]}): {self.n_rows} ratings "
                f"({self.n_holdout} holdout), {self.n_rejected} rejected")


def file_batch_id(path: str | os.PathLike) -> str:
    """The content hash that identifies a file's batch (sha256, hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_batch_id(ratings: pa.Table, salt: str = "") -> str:
    """Content hash of an in-memory batch (its ratings in order)."""
    digest = hashlib.sha256(salt.encode())
    for name in ("user_id", "item_id", "rating", "rated_at"):
        col = ratings[name].combine_chunks()
        digest.update(name.encode())
        for buf in col.buffers():
            if buf is not None:
                digest.update(buf)
    return digest.hexdigest()


def ingest_file(warehouse: Warehouse, path: str | os.PathLike, *, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
                scale: tuple[float, float] = DEFAULT_SCALE, format: str = "auto") -> IngestOutcome:
    """Read, validate and store one rating file as a batch."""
    path = Path(path)
    batch_id = file_batch_id(path) if path.is_file() else None
    if batch_id is not None:
        known = warehouse.batch_record(batch_id)
        if known is not None:
            return _known(known)
    result: ReadResult = read_ratings(path, format=format, scale=scale)  # raises: nothing written
    return ingest_table(warehouse, result.ratings, source=str(path), batch_id=batch_id,
                        rejected=result.rejected, holdout_fraction=holdout_fraction)


def ingest_table(warehouse: Warehouse, ratings: pa.Table, *, source: str, batch_id: str | None = None,
                 rejected: pa.Table | None = None, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
                 holdout: bool | None = None, compact_every: int = COMPACT_EVERY) -> IngestOutcome:
    """Store validated ratings as one batch. ``holdout=True/False`` forces the flag for every
    row (the demo's explicit split); otherwise the hash of (user, item) decides. Every
    ``compact_every`` batches (0: never) the append-only tables' small files are merged."""
    warehouse.ensure_tables()
    batch_id = batch_id or table_batch_id(ratings, salt=f"holdout={holdout}")
    rejected = rejected if rejected is not None else REJECT_SCHEMA.empty_table()
    if holdout is None:
        flags = holdout_mask(ratings["user_id"].to_numpy(zero_copy_only=False),
                             ratings["item_id"].to_numpy(zero_copy_only=False), holdout_fraction)
    else:
        flags = np.full(ratings.num_rows, holdout, dtype=bool)
    rows = ratings.select(["user_id", "item_id", "rating", "rated_at"])
    rows = rows.append_column("batch_id", pa.array([batch_id] * rows.num_rows, pa.string()))
    rows = rows.append_column("holdout", pa.array(flags, pa.bool_()))

    with warehouse.lock("ingest"):
        known = warehouse.batch_record(batch_id)
        if known is not None:
            return _known(known)
        # Each write is skipped when a crashed earlier attempt already committed it.
        if rows.num_rows and warehouse.transaction_version("ratings", batch_id) is None:
            warehouse.append("ratings", rows, txn=(batch_id, 1))
        if rejected.num_rows and warehouse.transaction_version("rejected_ratings", batch_id) is None:
            rej = rejected.append_column("batch_id", pa.array([batch_id] * rejected.num_rows, pa.string()))
            warehouse.append("rejected_ratings", rej, txn=(batch_id, 1))
        seq = _next_seq(warehouse)
        warehouse.append("batches", pa.Table.from_pylist([{
            "batch_id": batch_id, "seq": seq, "source": source, "n_rows": rows.num_rows,
            "n_rejected": rejected.num_rows, "ingested_at": now_utc(),
        }]))
    if compact_every and seq % compact_every == 0:
        compact_store_tables(warehouse)
    return IngestOutcome(batch_id, seq, source, rows.num_rows, rejected.num_rows, int(flags.sum()))


def _next_seq(warehouse: Warehouse) -> int:
    seqs = warehouse.read("batches", columns=["seq"])["seq"]
    return (max(seqs.to_pylist()) if len(seqs) else 0) + 1


def _known(record: dict) -> IngestOutcome:
    return IngestOutcome(record["batch_id"], record["seq"], record["source"], record["n_rows"],
                         record["n_rejected"], 0, already_ingested=True)
