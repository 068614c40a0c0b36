"""Use case: define models (one row of ``models`` each) and bootstrap them from batch ALS."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow as pa

from als_core.engines.base import ModelSpec
from als_core.model import FactorModel
from als_core.sgd import SGDParams
from als_core.store.schemas import MODEL_STATUSES, check_model_id
from als_core.store.warehouse import StoreError, Warehouse, now_utc

#: The best streaming settings found on the demo split (docs/streaming.md): mean aggregation
#: for the vectors and closed-form running-mean biases.
DEFAULT_PARAMS = SGDParams(rank=10, gamma=0.05, lambda_=0.05, lambda_bias=3.0, init_scale=0.1, seed=42,
                           aggregation="mean", bias_update="running_mean")


def create_model(warehouse: Warehouse, model_id: str, params: SGDParams = DEFAULT_PARAMS, *,
                 status: str = "active", note: str = "", replace: bool = False) -> ModelSpec:
    """Register a model. An existing id is an error unless ``replace`` (its factors stay)."""
    check_model_id(model_id)
    if status not in MODEL_STATUSES:
        raise StoreError(f"status must be one of {MODEL_STATUSES}, got {status!r}")
    warehouse.ensure_tables()
    existing = warehouse.models()["model_id"].to_pylist()
    if model_id in existing and not replace:
        raise StoreError(f"model {model_id!r} already exists in {warehouse.uri}")
    row = {"model_id": model_id, **{k: v for k, v in asdict(params).items()}, "status": status,
           "note": note, "created_at": now_utc()}
    warehouse.upsert_models([row])
    return ModelSpec(model_id, params)


def model_specs(warehouse: Warehouse, statuses=("active", "champion")) -> list[ModelSpec]:
    """The models that learn from new batches (pruned models stay queryable but frozen)."""
    models = warehouse.models()
    return [ModelSpec.from_record(r) for r in models.to_pylist() if r["status"] in statuses]


def set_status(warehouse: Warehouse, model_id: str, status: str, note: str = "") -> None:
    if status not in MODEL_STATUSES:
        raise StoreError(f"status must be one of {MODEL_STATUSES}, got {status!r}")
    warehouse.model_record(model_id)
    warehouse.upsert_models([{"model_id": model_id, "status": status, "note": note}])


def factor_rows_from_model(model_id: str, model: FactorModel, version: int, batch_seq: int | None = None) -> pa.Table:
    """All rows of a full model state (bootstrap): users, items and the global row."""
    def side_rows(side, ids, bias, vectors, counts):
        counts = counts if counts is not None else np.zeros(len(ids), np.int64)
        return {
            "side": [side] * len(ids), "id": ids.astype(np.int64), "n": counts.astype(np.int64),
            "bias": bias.astype(np.float64), "vector": list(vectors.astype(np.float32)),
        }
    users = side_rows("user", model.user_ids, model.user_bias, model.user_factors, model.user_counts)
    items = side_rows("item", model.item_ids, model.item_bias, model.item_factors, model.item_counts)
    n = len(model.user_ids) + len(model.item_ids) + 1
    return pa.table({
        "model_id": [model_id] * n,
        "version": pa.array([version] * n, pa.int64()),
        "side": users["side"] + items["side"] + ["global"],
        "id": pa.array(np.concatenate([users["id"], items["id"], [0]]), pa.int64()),
        "n": pa.array(np.concatenate([users["n"], items["n"], [model.n_ratings]]), pa.int64()),
        "bias": pa.array(np.concatenate([users["bias"], items["bias"], [model.mu]]), pa.float64()),
        "vector": pa.array(users["vector"] + items["vector"] + [None], pa.list_(pa.float32())),
        "batch_seq": pa.array([batch_seq] * n, pa.int64()),
    })


def bootstrap_model(warehouse: Warehouse, model_id: str, model: FactorModel, through_seq: int | None) -> int:
    """Write a full model (e.g. batch ALS) as the model's next version. ``through_seq``: the
    last batch it already learned from (those batches will not be applied again)."""
    rank = ModelSpec.from_record(warehouse.model_record(model_id)).params.rank
    if model.rank != rank:
        raise StoreError(f"model {model_id!r} has rank {rank}, the bootstrap model has rank {model.rank}")
    with warehouse.lock(f"model-{model_id}"):
        version = warehouse.current_version(model_id) + 1
        warehouse.commit_factor_version(model_id, factor_rows_from_model(model_id, model, version), through_seq)
    return version
