"""Use case: replay a rating file as a stream of time-ordered micro-batches.

Each batch is either ingested and applied at once, or written as a file into a landing
folder, like a message stream feeding the Dagster sensor. Landing files are written under a
hidden temporary name and renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from als_core.datasets import write_ratings
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.readers import read_ratings
from als_core.splits import time_order


@dataclass
class ReplayEvent:
    index: int  # 1-based batch number
    total: int
    path: Path | None = None  # landing file written
    seq: int | None = None  # batch seq when applied directly
    versions: int = 0  # factor versions written

    def describe(self) -> str:
        if self.path is not None:
            return f"batch {self.index}/{self.total} -> {self.path.name}"
        return f"batch {self.index}/{self.total}: seq {self.seq}, {self.versions} versions"


def landing_file_name(stem: str, index: int) -> str:
    return f"{stem}-batch-{index:06d}.csv"


def drop_file(table, landing: Path, name: str) -> Path:
    """Write-then-rename into the landing folder (the sensor's completeness convention).
    ``name`` must be a plain file name, so nothing is written outside ``landing``."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ValueError(f"landing file name {name!r}: use a plain file name (no '/', '\\', '..', not hidden)")
    landing.mkdir(parents=True, exist_ok=True)
    tmp = landing / f".tmp-{name}"  # hidden until renamed; keeps the extension for the writer
    tmp.unlink(missing_ok=True)  # a stale one (a crashed writer), or a planted symlink, is never written through
    write_ratings(table, tmp)
    final = landing / name
    os.replace(tmp, final)
    return final


def replay_batches(dataset: str | Path, *, batch_size: int = 1000, landing: Path | None = None, warehouse=None,
                   engine=None, holdout_fraction: float = 0.1, limit: int | None = None,
                   pause_seconds: float = 0.0) -> Iterator[ReplayEvent]:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if landing is None and (warehouse is None or engine is None):
        raise ValueError("replay needs a landing folder, or a warehouse and an engine to apply batches")
    dataset = Path(dataset)
    read = read_ratings(dataset)
    ratings = read.ratings.take(time_order(read.ratings))
    # Applying directly, the file's rejected rows (bad lines, superseded duplicates) are stored
    # with its first batch (one even if no row is good): every line ends up in the store.
    keep_rejects = landing is None and read.rejected.num_rows > 0
    starts = list(range(0, max(ratings.num_rows, int(keep_rejects)), batch_size))[:limit]
    for k, start in enumerate(starts, 1):
        chunk = ratings.slice(start, batch_size)
        if landing is not None:
            event = ReplayEvent(k, len(starts), path=drop_file(chunk, Path(landing), landing_file_name(dataset.stem, k)))
        else:
            outcome = ingest_table(warehouse, chunk, source=f"{dataset.name}#batch{k}", holdout_fraction=holdout_fraction,
                                   rejected=read.rejected if k == 1 else None)
            report = apply_pending(warehouse, engine, evaluate_every=0)
            report.raise_failures()
            event = ReplayEvent(k, len(starts), seq=outcome.seq, versions=len(report.applied))
        yield event
        if pause_seconds and k < len(starts):
            time.sleep(pause_seconds)  # pacing the stream (a feature), not synchronisation
