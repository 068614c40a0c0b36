"""The Delta tables of the factor store (contracts: DESIGN.md and docs/architecture.md)."""

from __future__ import annotations

import re

import pyarrow as pa

RATINGS = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()),
    ("rated_at", pa.int64()), ("batch_id", pa.string()), ("holdout", pa.bool_()),
])
BATCHES = pa.schema([
    ("batch_id", pa.string()), ("seq", pa.int64()), ("source", pa.string()),
    ("n_rows", pa.int64()), ("n_rejected", pa.int64()), ("ingested_at", pa.timestamp("us", tz="UTC")),
])
REJECTED_RATINGS = pa.schema([
    ("batch_id", pa.string()), ("line", pa.int64()), ("raw", pa.string()), ("reason", pa.string()),
])
MODELS = pa.schema([
    ("model_id", pa.string()), ("rank", pa.int64()), ("gamma", pa.float64()), ("lambda_", pa.float64()),
    ("lambda_bias", pa.float64()), ("init_scale", pa.float64()), ("seed", pa.int64()),
    ("aggregation", pa.string()), ("bias_update", pa.string()), ("status", pa.string()),
    ("note", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])
# batch_seq: the batch whose step wrote the row (NULL for bootstrap and rollback rows).
FACTORS = pa.schema([
    ("model_id", pa.string()), ("version", pa.int64()), ("side", pa.string()), ("id", pa.int64()),
    ("n", pa.int64()), ("bias", pa.float64()), ("vector", pa.list_(pa.float32())), ("batch_seq", pa.int64()),
])
EVALUATIONS = pa.schema([
    ("model_id", pa.string()), ("version", pa.int64()), ("kind", pa.string()), ("rmse", pa.float64()),
    ("mae", pa.float64()), ("n", pa.int64()), ("evaluated_at", pa.timestamp("us", tz="UTC")),
])
# One row per compaction of a model: reading a version older than compacted_version needs
# the table as it was at delta_version_before (Delta time travel).
COMPACTIONS = pa.schema([
    ("model_id", pa.string()), ("compacted_version", pa.int64()), ("delta_version_before", pa.int64()),
    ("rows_before", pa.int64()), ("rows_after", pa.int64()), ("compacted_at", pa.timestamp("us", tz="UTC")),
])

TABLES: dict[str, tuple[pa.Schema, list[str] | None]] = {
    "ratings": (RATINGS, None),
    "batches": (BATCHES, None),
    "rejected_ratings": (REJECTED_RATINGS, None),
    "models": (MODELS, None),
    "factors": (FACTORS, ["model_id"]),
    "evaluations": (EVALUATIONS, None),
    "compactions": (COMPACTIONS, None),
}

MODEL_STATUSES = ("active", "pruned", "champion")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_model_id(model_id: str) -> str:
    """Model ids become Delta partition folders and appear in SQL: only a safe alphabet.

    >>> check_model_id("r10_g0.05")
    'r10_g0.05'
    >>> check_model_id("x'; DROP TABLE factors; --")
    Traceback (most recent call last):
    ...
    ValueError: invalid model id "x'; DROP TABLE factors; --": use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit
    """
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise ValueError(
            f"invalid model id {model_id!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return model_id
