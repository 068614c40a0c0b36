"""The engine interface of DESIGN.md: given a model and a batch, run the sql/ steps and
return the new factor rows (Arrow) for the store to commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from als_core.sgd import SGDParams

# The first step file: the latest stored row per key. An engine whose reader returns only
# those already passes them as relation ``latest_factors`` and runs the files after it
# (`from_latest_rows`).
LATEST_STORED_FILE = ("step/00_latest_stored_factors", "latest_factors")

# The step files, in order, and the relation each one defines for the files after it.
STEP_FILES: list[tuple[str, str]] = [
    LATEST_STORED_FILE,
    ("step/01_select_batch_factors", "batch_factors"),
    ("step/02_join_batch_factors", "joined_factors"),
    ("step/03_init_unseen_factors", "key_factors"),
    ("step/04_update_global_mean", "global_state"),
    ("step/05_rating_errors", "rating_errors"),
    ("step/06_aggregate_gradients", "aggregate_gradients"),
    ("step/07_apply_gradients", "new_factor_rows"),
]

# The step's prequential scores: every rating of the batch predicted by the model as it was
# before the batch, with score_ratings.sql's cold-start rule; computed by rating_errors
# (NULL predictions before a model's first batch: nothing to score with).
PREQUENTIAL_RELATION = "rating_errors"
PREQUENTIAL_COLUMNS = ["rating_seq", "rating", "prediction"]

# Scoring (holdout evaluation, `Engine.score`): the state as of a version (steps 0 and 1
# over the stored rows) then predictions.
SCORE_FILES: list[tuple[str, str]] = [
    LATEST_STORED_FILE,
    ("step/01_select_batch_factors", "model_state"),
    ("score_ratings", "scores"),
]


def from_latest_rows(files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``files`` without `LATEST_STORED_FILE`, for stored rows that hold one row per key."""
    return [f for f in files if f != LATEST_STORED_FILE]


@dataclass(frozen=True)
class ModelSpec:
    """A streaming model: its id and hyperparameters (one row of the ``models`` table)."""

    model_id: str
    params: SGDParams

    @classmethod
    def from_record(cls, row: dict) -> "ModelSpec":
        return cls(row["model_id"], SGDParams(
            rank=int(row["rank"]), gamma=float(row["gamma"]), lambda_=float(row["lambda_"]),
            lambda_bias=float(row["lambda_bias"]), init_scale=float(row["init_scale"]), seed=int(row["seed"]),
            aggregation=row["aggregation"], bias_update=row.get("bias_update") or "sgd"))

    def step_params(self, new_version: int, batch_seq: int | None) -> pa.Table:
        p = self.params
        return pa.table({
            "model_id": [self.model_id], "rank": pa.array([p.rank], pa.int64()), "gamma": [float(p.gamma)],
            "lambda_": [float(p.lambda_)], "lambda_bias": [float(p.lambda_bias)], "init_scale": [float(p.init_scale)],
            "seed": pa.array([p.seed], pa.int64()), "aggregation": [p.aggregation], "bias_update": [p.bias_update],
            "new_version": pa.array([new_version], pa.int64()), "batch_seq": pa.array([batch_seq], pa.int64()),
        })


@dataclass
class StepResult:
    rows: pa.Table  # new factor rows (FACTORS schema columns)
    prequential: pa.Table  # rating, prediction: the batch scored before it was learned


class Engine(Protocol):
    name: str

    def step(self, warehouse, model: ModelSpec, batch: pa.Table, new_version: int, batch_seq: int | None,
             clip: tuple[float, float]) -> StepResult:
        """Run the sql/ step for one batch (user_id, item_id, rating) against the model's
        current stored factors."""

    def score(self, warehouse, model_id: str, ratings: pa.Table, version: int | None,
              clip: tuple[float, float]) -> pa.Table:
        """Predictions (rating_seq, rating, prediction) for ratings with the model as of a version."""

    def close(self) -> None: ...


def batch_relation(batch: pa.Table) -> pa.Table:
    """The ``batch_ratings`` relation the step reads: ratings numbered in arrival order."""
    return pa.table({
        "rating_seq": pa.array(np.arange(batch.num_rows), pa.int64()),
        "user_id": batch["user_id"].cast(pa.int64()),
        "item_id": batch["item_id"].cast(pa.int64()),
        "rating": batch["rating"].cast(pa.float64()),
    })


def in_rating_order(scores: pa.Table) -> pa.Table:
    """Scores in rating_seq order, so the RMSE's float sum is the same in every run. rating_seq
    numbers the batch from 0 (`batch_relation`), so this is a scatter, not a sort (sort_by
    took 12 ms for 100,000 scores)."""
    seq = scores["rating_seq"].to_numpy()
    if len(seq) == 0:
        return scores
    slots = np.full(int(seq.max()) + 1, -1, dtype=np.int64)
    slots[seq] = np.arange(len(seq))
    return scores.take(slots[slots >= 0])


def vector_lengths(vectors) -> tuple[int | None, int | None]:
    """(shortest, longest) length of the non-NULL vectors of a list column; (None, None)
    when there are none (the global row's vector is NULL)."""
    bounds = pc.min_max(pc.list_value_length(vectors))
    return bounds["min"].as_py(), bounds["max"].as_py()


def score_params(clip: tuple[float, float]) -> pa.Table:
    return pa.table({"clip_low": [float(clip[0])], "clip_high": [float(clip[1])]})


def get_engine(name: str = "duckdb", **options) -> Engine:
    """The engine by name: 'duckdb' (embedded default) or 'spark'."""
    if name == "duckdb":
        from als_core.engines.duckdb_engine import DuckDBEngine

        return DuckDBEngine(**options)
    if name == "spark":
        from als_core.engines.spark_engine import SparkEngine

        return SparkEngine(**options)
    raise ValueError(f"unknown engine {name!r}: choose 'duckdb' or 'spark'")
