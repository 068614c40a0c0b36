"""Metadata for the Dagster UI: row counts, Markdown tables, an embedded PNG."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Iterable, Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from als_core.store.warehouse import Warehouse


def table_rows(warehouse: Warehouse, name: str) -> int:
    """Rows of a store table, from the Delta log's file statistics (no data file opened;
    the Parquet footers when the log has no row counts)."""
    dt = warehouse.table(name)
    if dt is None:
        return 0
    counts = pa.table(dt.get_add_actions(flatten=True))["num_records"]
    if counts.null_count == 0:
        return int(pc.sum(counts).as_py() or 0)
    return int(dt.to_pyarrow_dataset().count_rows())


def ledger_seq(warehouse: Warehouse) -> int:
    seqs = warehouse.read("batches", columns=["seq"])["seq"]
    return int(pc.max(seqs).as_py() or 0) if len(seqs) else 0


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(columns: Sequence[str], rows: Iterable[Sequence]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def embedded_png(path: Path, alt: str) -> dg.MetadataValue:
    """The image inline (a data: URI), so the UI shows it without access to the file."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def models_table(warehouse: Warehouse) -> dg.MetadataValue:
    rows = []
    for m in warehouse.models().to_pylist():
        rows.append((m["model_id"], m["status"], m["rank"], m["lambda_"], m["gamma"],
                     warehouse.current_version(m["model_id"]), warehouse.applied_seq(m["model_id"]), m["note"]))
    return md_table(["model", "status", "rank", "lambda", "gamma", "version", "applied batch", "note"], rows)
