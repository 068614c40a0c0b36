"""Hyperparameter search for batch ALS and successive-halving pruning of streaming models.

Pure functions: no I/O, no clock other than the fit timer.

* ``grid_search_als(train, validation, ranks, lambdas, iterations_list, ...)`` fits one batch
  ALS model per grid point and scores it on the validation ratings; rows come back best first.
* ``successive_halving(scores)`` decides which models of a grid keep learning: the better
  ``keep_fraction`` (lower score = better) survives, never fewer than ``min_keep``.

>>> rng = np.random.default_rng(0)
>>> users, items = rng.integers(0, 30, 600), rng.integers(0, 40, 600)
>>> ratings = np.clip(np.round(3 + rng.normal(0, 1, 600)), 1, 5)
>>> rows = grid_search_als((users[:500], items[:500], ratings[:500]),
...                        (users[500:], items[500:], ratings[500:]),
...                        ranks=[2, 4], lambdas=[1.0, 10.0], iterations_list=[5])
>>> len(rows), [r.rmse for r in rows] == sorted(r.rmse for r in rows)
(4, True)
>>> rows[0].params.rank in (2, 4), rows[0].fit_seconds >= 0
(True, True)

>>> successive_halving({"a": 0.91, "b": 0.87, "c": float("nan"), "d": 0.95, "e": 0.87})
(['b', 'e', 'a'], ['d', 'c'])
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from als_core.als import ALSParams, fit_als
from als_core.metrics import mae, rmse

# Predictions are clipped to the MovieLens rating scale before scoring, as everywhere else.
RATING_SCALE = (0.5, 5.0)


@dataclass(frozen=True)
class GridResult:
    """One grid point: its parameters, validation accuracy and how long the fit took."""

    params: ALSParams
    rmse: float
    mae: float
    fit_seconds: float


def _columns(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ratings) from an Arrow table / record batch / mapping with columns
    ``user_id``, ``item_id``, ``rating``, a ``(users, items, ratings)`` sequence, or an
    (n, 3) numpy array of user, item, rating.

    >>> _columns(np.array([[1, 2, 4.0]]))
    (array([1]), array([2]), array([4.]))
    """
    names = ("user_id", "item_id", "rating")
    if hasattr(data, "column_names") or isinstance(data, Mapping):
        cols = []
        for name in names:
            col = data[name]
            cols.append(col.to_numpy(zero_copy_only=False) if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray) else np.asarray(col))
        u, i, r = cols
    elif isinstance(data, np.ndarray) and data.ndim == 2:
        if data.shape[1] != 3:
            raise ValueError(f"a numpy rating array must have 3 columns (user, item, rating), got {data.shape[1]}")
        u, i, r = data[:, 0], data[:, 1], data[:, 2]
    elif isinstance(data, Sequence) and len(data) == 3:
        u, i, r = data
    else:
        raise TypeError(
            "ratings must be an Arrow table (user_id, item_id, rating), a mapping of those columns, "
            f"a (users, items, ratings) tuple or an (n, 3) array; got {type(data).__name__}"
        )
    u = np.asarray(u).astype(np.int64, copy=False)
    i = np.asarray(i).astype(np.int64, copy=False)
    r = np.asarray(r, dtype=np.float64)
    if not len(u) == len(i) == len(r):
        raise ValueError(f"column lengths differ: {len(u)} users, {len(i)} items, {len(r)} ratings")
    return u, i, r


def _sort_key(row: GridResult, index: int):
    """Best first: finite RMSE ascending, then MAE, then grid order; non-finite scores last."""
    finite = math.isfinite(row.rmse)
    return (not finite, row.rmse if finite else 0.0, row.mae if math.isfinite(row.mae) else math.inf, index)


def grid_search_als(
    train,
    validation,
    ranks: Iterable[int],
    lambdas: Iterable[float],
    iterations_list: Iterable[int],
    *,
    lambda_biases: Iterable[float] | None = None,
    base: ALSParams | None = None,
    clip: tuple[float, float] | None = RATING_SCALE,
    threads: int | None = None,
) -> list[GridResult]:
    """Fit batch ALS for every (rank, λ, λ_b, iterations) of the grid on ``train`` and score
    it on ``validation``. Returns one `GridResult` per grid point, best (lowest validation
    RMSE; ties: lower MAE, then grid order) first.

    ``lambda_biases``: the bias penalties to try (default: only ``base.lambda_bias``). Every
    other parameter (seed, init_scale, weighted_lambda, tol) comes from ``base`` (default
    `ALSParams()`). Predictions are clipped to ``clip`` before scoring (None: no clipping).
    A fit that fails numerically (singular system, non-finite predictions) is kept with
    RMSE/MAE NaN and sorts last.
    """
    base = base or ALSParams()
    tu, ti, tr = _columns(train)
    vu, vi, vr = _columns(validation)
    if len(vr) == 0:
        raise ValueError("validation set is empty")
    grid = list(itertools.product(
        [int(k) for k in ranks],
        [float(x) for x in lambdas],
        [float(x) for x in (lambda_biases if lambda_biases is not None else [base.lambda_bias])],
        [int(n) for n in iterations_list],
    ))
    if not grid:
        raise ValueError("empty grid: ranks, lambdas and iterations_list need at least one value each")
    rows = []
    for rank, lam, lam_b, iterations in grid:
        params = replace(base, rank=rank, lambda_=lam, lambda_bias=lam_b, iterations=iterations)
        start = time.perf_counter()
        try:
            model = fit_als(tu, ti, tr, params, threads=threads)
        except np.linalg.LinAlgError:
            rows.append(GridResult(params, math.nan, math.nan, time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        pred = model.predict(vu, vi, clip=clip)
        if not np.all(np.isfinite(pred)):
            rows.append(GridResult(params, math.nan, math.nan, seconds))
            continue
        rows.append(GridResult(params, rmse(vr, pred), mae(vr, pred), seconds))
    order = sorted(range(len(rows)), key=lambda j: _sort_key(rows[j], j))
    return [rows[j] for j in order]


def successive_halving(
    scores: Mapping[str, float], keep_fraction: float = 0.5, min_keep: int = 2
) -> tuple[list[str], list[str]]:
    """Split models into (kept, pruned) by score (lower is better).

    - The ``ceil(keep_fraction * n)`` best of the n models are kept, but never fewer than
      ``min_keep`` (or all of them when fewer exist).
    - Ties are broken by model id (ascending), so the split never depends on dict order.
    - A NaN or infinite score (a diverged or unscored model) is pruned first, and always:
      ``min_keep`` counts finite scores only, so a grid whose models all diverged keeps none.
    - ``kept`` is best first; ``pruned`` is best first too, non-finite ones at the end.

    >>> successive_halving({"m1": 0.9, "m2": 0.8, "m3": 1.0, "m4": 0.85})
    (['m2', 'm4'], ['m1', 'm3'])
    >>> successive_halving({"b": 0.9, "a": 0.9, "c": 0.9}, keep_fraction=0.34, min_keep=1)
    (['a', 'b'], ['c'])
    >>> successive_halving({"x": float("inf"), "y": 1.0}, min_keep=2)
    (['y'], ['x'])
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    finite = sorted((float(s), m) for m, s in scores.items() if math.isfinite(float(s)))
    broken = sorted(m for m, s in scores.items() if not math.isfinite(float(s)))
    n_keep = max(math.ceil(keep_fraction * len(scores) - 1e-9), min_keep)
    n_keep = min(n_keep, len(finite))
    kept = [m for _, m in finite[:n_keep]]
    pruned = [m for _, m in finite[n_keep:]] + broken
    return kept, pruned


__all__ = ["GridResult", "grid_search_als", "successive_halving", "RATING_SCALE"]
