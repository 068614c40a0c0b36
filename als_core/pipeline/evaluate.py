"""Use case: offline evaluation of a rating file (split, fit, score), for `streaming-als evaluate`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from als_core.als import ALSParams, fit_als
from als_core.datasets import shipped_ratings_path
from als_core.metrics import mae, rmse
from als_core.model import FactorModel
from als_core.pipeline.models import DEFAULT_PARAMS
from als_core.readers import read_ratings
from als_core.schema import DEFAULT_SCALE
from als_core.sgd import SGDParams, replay
from als_core.splits import random_split, temporal_split


def damped_bias_baseline(users, items, ratings, damping: float = 5.0) -> FactorModel:
    """μ + damped user/item mean offsets (no factors): the classic baseline to beat."""
    users, items, ratings = np.asarray(users), np.asarray(items), np.asarray(ratings, dtype=np.float64)
    mu = ratings.mean()
    i_ids, i_idx = np.unique(items, return_inverse=True)
    bi = np.bincount(i_idx, ratings - mu) / (np.bincount(i_idx) + damping)
    u_ids, u_idx = np.unique(users, return_inverse=True)
    bu = np.bincount(u_idx, ratings - mu - bi[i_idx]) / (np.bincount(u_idx) + damping)
    return FactorModel(mu=float(mu), user_ids=u_ids, user_bias=bu, user_factors=np.zeros((len(u_ids), 0)),
                       item_ids=i_ids, item_bias=bi, item_factors=np.zeros((len(i_ids), 0)))


def evaluate_file(path: str | Path | None = None, *, split: str = "random", rank: int = 10, iterations: int = 10,
                  batch_size: int = 1000, scale=DEFAULT_SCALE, stream_params: SGDParams = DEFAULT_PARAMS):
    """Rows (model, RMSE, MAE, seconds) on the test part of an 80/20 split."""
    ratings = read_ratings(path or shipped_ratings_path(), scale=scale).ratings
    if split == "random":
        train, test = random_split(ratings, 0.8, seed=42)
    elif split == "temporal":
        train, test = temporal_split(ratings, 0.8)
    else:
        raise ValueError(f"split must be 'random' or 'temporal', got {split!r}")
    col = lambda t, c: t[c].to_numpy()  # noqa: E731
    tu, ti, tr = col(train, "user_id"), col(train, "item_id"), col(train, "rating")
    eu, ei, er = col(test, "user_id"), col(test, "item_id"), col(test, "rating")
    rows = []
    fits = {
        "damped bias baseline": lambda: damped_bias_baseline(tu, ti, tr),
        f"batch ALS (rank {rank}, {iterations} it.)": lambda: fit_als(tu, ti, tr, ALSParams(rank=rank, iterations=iterations)),
        f"streaming SGD reference ({batch_size}-rating batches, one pass)":
            lambda: replay(tu, ti, tr, SGDParams(**{**stream_params.__dict__, "rank": rank}), batch_size),
    }
    for name, fit in fits.items():
        t0 = time.perf_counter()
        model = fit()
        seconds = time.perf_counter() - t0
        pred = model.predict(eu, ei, clip=scale)
        rows.append((name, rmse(er, pred), mae(er, pred), seconds))
    return rows
