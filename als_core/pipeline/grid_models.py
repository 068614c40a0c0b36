"""Use cases behind the Dagster grid assets: a grid of streaming models, successive-halving
pruning rounds, holdout evaluations of versions that lack one, and the batch ALS baseline.

The grid is rank x lambda x gamma on top of a base `SGDParams`; each cell is one row of
``models`` whose id names its settings (``r10_l0.05_g0.02``).

Pruning happens in rounds: round k is due once a live (active or champion) grid model has
applied batch ``k * every``. Each round scores the live models on their prequential RMSE over
the batches ``(k * every - window, k * every]`` and keeps the best ``keep_fraction`` of them
(never fewer than ``min_keep``); the best becomes ``champion``, the others are ``pruned``
(they stop learning but stay queryable). Every model a round looked at gets a note starting
with ``[round k @ batch b]``: the notes are the record of which rounds are done (so pruning is
idempotent and needs no state outside the store) and say why a model was pruned.

>>> grid_model_id(10, 0.05, 0.02)
'r10_l0.05_g0.02'
>>> sorted(grid_params(GridSpec(ranks=(5,), lambdas=(0.1,), gammas=(0.01, 0.02))))
['r5_l0.1_g0.01', 'r5_l0.1_g0.02']
>>> combined_rmse([1.0, 1.0], [10, 30])
1.0
>>> pick_halving({"a": 1.0, "b": 0.9, "c": 1.2, "d": float("inf")}, 0.5, 2)
(['b', 'a'], ['c', 'd'])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from als_core.als import ALSParams, fit_als
from als_core.model import FactorModel
from als_core.pipeline.apply import holdout_evaluation, record_evaluation
from als_core.pipeline.models import DEFAULT_PARAMS, bootstrap_model, create_model
from als_core.schema import DEFAULT_SCALE
from als_core.sgd import SGDParams
from als_core.store.warehouse import Warehouse, now_utc

LIVE = ("active", "champion")
BATCH_BASELINE_MODEL = "batch_als"  # model_id of the kind='batch_baseline' evaluation rows
_ROUND_TAG = re.compile(r"\[round (\d+) @ batch (\d+)\]")


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class GridSpec:
    ranks: tuple[int, ...] = (5, 10)
    lambdas: tuple[float, ...] = (0.05, 0.1)
    gammas: tuple[float, ...] = (0.05, 0.1)
    base: SGDParams = DEFAULT_PARAMS


def grid_model_id(rank: int, lambda_: float, gamma: float) -> str:
    return f"r{int(rank)}_l{float(lambda_):g}_g{float(gamma):g}"


def grid_params(spec: GridSpec) -> dict[str, SGDParams]:
    """Model id -> parameters for every cell of the grid."""
    cells = {}
    for rank in spec.ranks:
        for lam in spec.lambdas:
            for gamma in spec.gammas:
                cells[grid_model_id(rank, lam, gamma)] = replace(spec.base, rank=int(rank), lambda_=float(lam),
                                                                 gamma=float(gamma))
    return cells


def ensure_grid_models(warehouse: Warehouse, spec: GridSpec) -> tuple[list[str], list[str]]:
    """Create the grid's models that the store does not have yet (status active); models
    already there keep their status (a pruned model stays pruned). Returns (created, existing)."""
    warehouse.ensure_tables()
    known = set(warehouse.models()["model_id"].to_pylist())
    created, existing = [], []
    for model_id, params in grid_params(spec).items():
        if model_id in known:
            existing.append(model_id)
        else:
            create_model(warehouse, model_id, params, note="hyperparameter grid")
            created.append(model_id)
    return created, existing


# --------------------------------------------------------------------------- pruning
def combined_rmse(rmses: Iterable[float], counts: Iterable[int]) -> float:
    """The RMSE of the union of several scored batches, from each batch's RMSE and size."""
    r = np.asarray(list(rmses), dtype=np.float64)
    n = np.asarray(list(counts), dtype=np.float64)
    if len(r) == 0 or n.sum() == 0:
        return math.inf
    return float(np.sqrt(np.sum(n * r * r) / n.sum()))


def recent_prequential_rmse(warehouse: Warehouse, model_ids: Iterable[str], first_seq: int,
                            last_seq: int) -> dict[str, float]:
    """Each model's prequential RMSE over the batches with seq in [first_seq, last_seq]
    (inf when it scored none of them, e.g. a model stuck on a numerical fault)."""
    model_ids = list(model_ids)
    evals = warehouse.read("evaluations", filter=(pc.field("kind") == "prequential")
                           & pc.field("model_id").isin(pa.array(model_ids, pa.string()))).to_pylist()
    scores = {}
    for model_id in model_ids:
        versions = warehouse.model_versions(model_id).to_pylist()
        seq_of = {v["version"]: v["batch_seq"] for v in versions}
        latest: dict[int, dict] = {}  # one row per version: the latest evaluation
        for e in evals:
            if e["model_id"] == model_id and (e["version"] not in latest
                                              or e["evaluated_at"] > latest[e["version"]]["evaluated_at"]):
                latest[e["version"]] = e
        window = [e for v, e in latest.items() if seq_of.get(v) is not None and first_seq <= seq_of[v] <= last_seq]
        scores[model_id] = combined_rmse([e["rmse"] for e in window], [e["n"] for e in window])
    return scores


def pick_halving(scores: Mapping[str, float], keep_fraction: float, min_keep: int) -> tuple[list[str], list[str]]:
    """(kept, pruned), each best first (`als_core.grid.successive_halving`)."""
    from als_core.grid import successive_halving

    return successive_halving(scores, keep_fraction=keep_fraction, min_keep=min_keep)


@dataclass
class PruneRound:
    round: int
    boundary_seq: int  # the round looked at batches first_seq..boundary_seq
    first_seq: int
    scores: dict[str, float]
    kept: list[str]
    pruned: list[str]
    champion: str
    reasons: dict[str, str] = field(default_factory=dict)  # model_id -> note written


def rounds_done(warehouse: Warehouse, model_ids: Iterable[str]) -> int:
    """The last pruning round recorded in the notes of these models (0: none yet)."""
    wanted = set(model_ids)
    done = 0
    for row in warehouse.models().to_pylist():
        if row["model_id"] in wanted:
            for match in _ROUND_TAG.finditer(row.get("note") or ""):
                done = max(done, int(match.group(1)))
    return done


def prune_due_rounds(warehouse: Warehouse, model_ids: Iterable[str], *, every: int, keep_fraction: float = 0.5,
                     min_keep: int = 2, window: int | None = None) -> list[PruneRound]:
    """Run every pruning round that is due and not yet recorded (see the module doc)."""
    if every < 1:
        raise ValueError(f"pruning needs every >= 1 batches, got {every}")
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1, got {min_keep}")
    window = window or every
    model_ids = list(model_ids)
    records = {r["model_id"]: r for r in warehouse.models().to_pylist() if r["model_id"] in set(model_ids)}
    live = sorted(m for m, r in records.items() if r["status"] in LIVE)
    if not live:
        return []
    reached = max(warehouse.applied_seq(m) for m in live)
    rounds = []
    k = rounds_done(warehouse, model_ids)
    while (k + 1) * every <= reached:
        k += 1
        boundary = k * every
        first = max(1, boundary - window + 1)
        scores = recent_prequential_rmse(warehouse, live, first, boundary)
        kept, pruned = pick_halving(scores, keep_fraction, min_keep)
        tag = f"[round {k} @ batch {boundary}]"
        if not kept:  # no model has a finite score: no evidence to prune on, keep them all
            warehouse.upsert_models([{"model_id": m, "note": f"{tag} kept: no model has a finite prequential RMSE "
                                      f"over batches {first}-{boundary}"} for m in live])
            rounds.append(PruneRound(k, boundary, first, scores, list(live), [], "", {}))
            continue
        champion = kept[0]

        def describe(m: str) -> str:
            s = scores[m]
            return (f"prequential RMSE {s:.4f} over batches {first}-{boundary}" if math.isfinite(s)
                    else f"no prequential evaluation over batches {first}-{boundary} (numerical fault?)")
        ranked = kept + pruned
        reasons = {}
        for m in ranked:
            place = f"place {ranked.index(m) + 1} of {len(ranked)}"
            if m == champion:
                reasons[m] = f"{tag} champion: best {describe(m)}"
            elif m in kept:
                reasons[m] = f"{tag} kept: {describe(m)}, {place}"
            else:
                reasons[m] = (f"{tag} pruned: {describe(m)}, {place}; successive halving kept the best "
                              f"{len(kept)} (keep_fraction={keep_fraction:g}, min_keep={min_keep})")
        status = {m: ("champion" if m == champion else "active" if m in kept else "pruned") for m in ranked}
        rows = [{"model_id": m, "status": status[m], "note": reasons[m]} for m in ranked]
        # One champion in the store: another champion (e.g. outside the grid) goes back to active.
        for other in warehouse.models("champion")["model_id"].to_pylist():
            if other not in status:
                rows.append({"model_id": other, "status": "active",
                             "note": f"{tag} champion handed to {champion} ({now_utc():%Y-%m-%d %H:%M:%S})"})
        warehouse.upsert_models(rows)
        rounds.append(PruneRound(k, boundary, first, scores, kept, pruned, champion, reasons))
        live = sorted(kept)
    return rounds


# --------------------------------------------------------------------------- evaluations
def evaluate_missing_versions(warehouse: Warehouse, engine, model_ids: Iterable[str] | None = None,
                              statuses: tuple[str, ...] = LIVE, clip: tuple[float, float] = DEFAULT_SCALE) -> list[dict]:
    """Holdout evaluations (written) for every version of the models that has none yet,
    e.g. bootstrap versions or versions applied with ``evaluate_every`` > 1. Each model is
    handled under its lock, so this never races `apply_pending` into duplicate rows."""
    holdout = warehouse.holdout_ratings()
    if holdout.num_rows == 0:
        return []
    models = [r["model_id"] for r in warehouse.models().to_pylist() if r["status"] in statuses]
    if model_ids is not None:
        models = [m for m in models if m in set(model_ids)]
    written = []
    for model_id in models:
        with warehouse.lock(f"model-{model_id}"):
            done = set(warehouse.read("evaluations", filter=(pc.field("model_id") == model_id)
                                      & (pc.field("kind") == "holdout"), columns=["version"])["version"].to_pylist())
            rows = []
            for version in warehouse.model_versions(model_id)["version"].to_pylist():
                if version not in done:
                    row = holdout_evaluation(engine, warehouse, model_id, version, holdout, clip)
                    if row is not None:
                        rows.append(row)
            if rows:
                warehouse.append("evaluations", pa.Table.from_pylist(rows))
                written.extend(rows)
    return written


def latest_evaluations(warehouse: Warehouse) -> list[dict]:
    """Per model: its status, current version and the latest holdout / prequential scores."""
    evals = warehouse.read("evaluations").to_pylist()
    latest: dict[tuple[str, str], dict] = {}
    for e in evals:
        key = (e["model_id"], e["kind"])
        if key not in latest or (e["version"], e["evaluated_at"]) > (latest[key]["version"], latest[key]["evaluated_at"]):
            latest[key] = e
    rows = []
    for m in warehouse.models().to_pylist():
        h, p = latest.get((m["model_id"], "holdout")), latest.get((m["model_id"], "prequential"))
        rows.append({"model_id": m["model_id"], "status": m["status"], "version": warehouse.current_version(m["model_id"]),
                     "holdout_rmse": h and h["rmse"], "holdout_mae": h and h["mae"],
                     "prequential_rmse": p and p["rmse"], "prequential_mae": p and p["mae"]})
    return rows


def holdout_curves(warehouse: Warehouse, model_ids: Iterable[str] | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """Model id -> (versions, holdout RMSE) for plotting (latest evaluation per version)."""
    evals = warehouse.read("evaluations", filter=pc.field("kind") == "holdout").to_pylist()
    wanted = set(model_ids) if model_ids is not None else None
    per: dict[str, dict[int, dict]] = {}
    for e in evals:
        if wanted is not None and e["model_id"] not in wanted:
            continue
        byv = per.setdefault(e["model_id"], {})
        if e["version"] not in byv or e["evaluated_at"] > byv[e["version"]]["evaluated_at"]:
            byv[e["version"]] = e
    return {m: (sorted(byv), [byv[v]["rmse"] for v in sorted(byv)]) for m, byv in sorted(per.items())}


def latest_baseline(warehouse: Warehouse) -> dict | None:
    """The most recent batch_baseline evaluation row, or None."""
    rows = warehouse.read("evaluations", filter=pc.field("kind") == "batch_baseline").to_pylist()
    return max(rows, key=lambda r: r["evaluated_at"]) if rows else None


# --------------------------------------------------------------------------- batch baseline
@dataclass
class BaselineOutcome:
    model: FactorModel
    through_seq: int  # the last ledger batch it was trained on
    n_train: int
    n_holdout: int
    rmse: float | None
    mae: float | None
    bootstrapped: str | None = None  # model id bootstrapped from it, if any
    bootstrap_version: int | None = None


def fit_batch_baseline(warehouse: Warehouse, params: ALSParams = ALSParams(), *, model_id: str = BATCH_BASELINE_MODEL,
                       clip: tuple[float, float] = DEFAULT_SCALE) -> BaselineOutcome:
    """Batch ALS (numpy) on every training rating (holdout = false) of the ledger's batches;
    its holdout RMSE/MAE is written to ``evaluations`` (kind 'batch_baseline', version = the
    last batch seq it saw)."""
    warehouse.ensure_tables()
    ledger = warehouse.ledger()
    if ledger.num_rows == 0:
        raise ValueError(f"no batches in {warehouse.uri}: nothing to train batch ALS on")
    through = int(pc.max(ledger["seq"]).as_py())
    batch_ids = pa.array(ledger["batch_id"].to_pylist(), pa.string())
    train = warehouse.read("ratings", filter=(pc.field("holdout") == False) & pc.field("batch_id").isin(batch_ids))  # noqa: E712
    if train.num_rows == 0:
        raise ValueError(f"no training ratings in {warehouse.uri}")
    col = lambda t, c: t[c].to_numpy()  # noqa: E731
    model = fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), params)
    holdout = warehouse.read("ratings", filter=(pc.field("holdout") == True) & pc.field("batch_id").isin(batch_ids))  # noqa: E712
    r = a = None
    if holdout.num_rows:
        y, p = col(holdout, "rating"), model.predict(col(holdout, "user_id"), col(holdout, "item_id"), clip=clip)
        r, a = record_evaluation(warehouse, model_id, through, "batch_baseline", y, p)
    return BaselineOutcome(model, through, train.num_rows, holdout.num_rows, r, a)


def bootstrap_new_model(warehouse: Warehouse, model_id: str, outcome: BaselineOutcome,
                        base: SGDParams = DEFAULT_PARAMS) -> int | None:
    """Create ``model_id`` (rank of the ALS model, other settings from ``base``) starting from
    the batch ALS factors, as if it had learned batches 1..through_seq. Only for a model that
    is new or has no version yet; returns the version written, or None (nothing done)."""
    known = set(warehouse.models()["model_id"].to_pylist())
    if model_id in known and warehouse.current_version(model_id) > 0:
        return None
    if model_id not in known:
        create_model(warehouse, model_id, replace(base, rank=outcome.model.rank),
                     note=f"bootstrapped from batch ALS through batch {outcome.through_seq}")
    version = bootstrap_model(warehouse, model_id, outcome.model, through_seq=outcome.through_seq)
    outcome.bootstrapped, outcome.bootstrap_version = model_id, version
    return version


__all__ = [
    "GridSpec", "grid_model_id", "grid_params", "ensure_grid_models", "combined_rmse", "recent_prequential_rmse",
    "pick_halving", "PruneRound", "rounds_done", "prune_due_rounds", "evaluate_missing_versions",
    "latest_evaluations", "holdout_curves", "latest_baseline", "BaselineOutcome", "fit_batch_baseline",
    "bootstrap_new_model", "BATCH_BASELINE_MODEL",
]
