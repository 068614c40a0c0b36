"""Batch ALS for explicit feedback, with biases, in numpy (and two compiled loops).

Minimises ``Σ (r - μ - b_u - b_i - U_u·P_i)² + λ Σ w_u |U_u|² + λ Σ w_i |P_i|² + λ_b Σ b²``
(w = 1, or the rating count with ``weighted_lambda`` as in Spark's ALS-WR) by alternating
closed-form solves: with the items fixed, each user's ``[U_u, b_u]`` is one ridge regression
on the features ``[P_i, 1]`` of the items it rated, and vice versa. μ is the training mean.

Ratings are grouped per key (CSR order, by a compiled counting sort: `als_core.csr`) and
keys with similar counts are gathered into one block (widths in quarter-octave steps, a width
class with few keys merged into the next one), the unit of work of a small thread pool. With
``X`` the features ``[P_i, 1]`` of a key's n ratings, ``y`` their targets and ``D`` the
diagonal penalty, each key solves

* n ≥ rank + 1 (primal form): ``(XᵀX + D) x = Xᵀy``, a (rank+1)² system; ``XᵀX`` comes
  from BLAS ``syrk`` (or, up to rank 15, from compiled dot products: `als_core.ridge`).
* n < rank + 1 (dual form, when every penalty is > 0): by the push-through identity
  ``(XᵀX + D)⁻¹Xᵀ = D⁻¹Xᵀ(XD⁻¹Xᵀ + I)⁻¹``, so ``x = D⁻¹Xᵀα`` with ``(XD⁻¹Xᵀ + I)α = y``,
  an n² system. Most keys of a sparse data set are light, and a 4x4 solve costs a fraction
  of a 51x51 one.

Both forms give the same solution up to solver round-off (~1e-12 relative). When every
penalty is positive (the usual case) all systems are positive definite and a block runs
through `als_core.ridge`: one compiled loop over its keys, each with its own n (no padding)
and a Cholesky solve. Otherwise (a zero penalty) numpy solves the block: keys padded to the
block's width (zero rows, which change nothing), batched BLAS products, LU solves, and the
primal form only. No Python loop runs per user or item on either path. Each block writes its
own keys only and its arithmetic does not depend on the thread that runs it, so results are
bit-identical for any thread count. BLAS itself runs single-threaded during a fit: the blocks
are the parallelism (see `_single_threaded_blas`).

>>> from als_core.als import fit_als
>>> users = np.array([1, 1, 2, 2, 3]); items = np.array([1, 2, 1, 3, 2])
>>> r = np.array([5.0, 3.0, 4.0, 1.0, 2.0])
>>> model = fit_als(users, items, r, rank=2, iterations=20, lambda_=0.01, lambda_bias=0.01)
>>> round(model.mu, 2)
3.0
>>> bool(np.abs(model.predict(users, items) - r).max() < 0.1)
True
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from als_core.init import SIDE_ITEM, SIDE_USER, init_vectors
from als_core.model import FactorModel

# Keys per task: about this many gathered feature doubles (16 MB). It bounds the memory per
# thread on the numpy path; on the compiled path it only sets how finely the threads share work.
_TASK_DOUBLES = 1 << 21
# Width classes holding fewer keys than this are merged into the next wider class (fewer calls).
_MIN_CLASS_KEYS = 8
# Per-rating index arrays (dense key indices, CSR positions) are int32: half the memory and
# the memory traffic of int64 (a large fit waits on memory more than on arithmetic).
_MAX_RATINGS = np.iinfo(np.int32).max
# Below this many rating features (ratings x (rank + 1)) a fit runs on the calling thread only.
_PARALLEL_MIN_DOUBLES = 1 << 16


@dataclass(frozen=True)
class ALSParams:
    """Hyperparameters. The defaults come from a grid over rank {10, 20, 50} x λ {5..30} x
    λ_b {1..20} on MovieLens latest-small (random_split 0.8, seed 42, predictions clipped to
    [0.5, 5]): rank 10, λ = 15, λ_b = 5 gives test RMSE 0.849 there (0.916 on ML-100k), against
    1.11 for the old λ = λ_b = 0.1. The optimum is flat: λ 12-18 and λ_b 2-10 stay within 0.003.
    λ is the penalty per key (not per rating) unless ``weighted_lambda``."""

    rank: int = 10
    iterations: int = 10
    lambda_: float = 15.0
    lambda_bias: float = 5.0
    init_scale: float = 0.1
    seed: int = 42
    weighted_lambda: bool = False
    tol: float | None = None  # stop early when the relative loss drop falls below tol


@dataclass
class _Grouping:
    """Ratings of one side in CSR order: key k's ratings are the rating positions
    ``order[starts[k] : starts[k] + counts[k]]``. Half-steps read their inputs permuted into
    this order once, so every per-key read is sequential. ``blocks`` are the units of work of
    the thread pool: keys of similar counts, with the width (padded length) of their class."""

    keys: np.ndarray  # dense indices of the keys with ratings
    counts: np.ndarray  # ratings per key (dense index order)
    starts: np.ndarray  # first position of each key's ratings in CSR order
    order: np.ndarray  # rating positions sorted by key (stable)
    blocks: list[tuple[np.ndarray, int]]  # (key indices, width >= every count among them)


def _widths(counts: np.ndarray) -> np.ndarray:
    """Padded width per key: counts rounded up to quarter-octave steps (1..8, 10, 12, 14, 16, 20, ...)."""
    c = np.maximum(counts, 1)
    step = np.left_shift(1, np.maximum(np.floor(np.log2(c)).astype(np.int64) - 2, 0))
    return -(-c // step) * step


def _group(key_idx: np.ndarray, n_keys: int, rank: int = 10) -> _Grouping:
    """Group ratings per key (CSR) and cut the keys into blocks sized for ``rank``."""
    from als_core.csr import csr_order  # compiled (numba): imported on first use, like als_core.ridge

    key_idx = np.asarray(key_idx, dtype=np.int32)
    counts = np.bincount(key_idx, minlength=n_keys)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    order = csr_order(key_idx, starts)
    keys = np.nonzero(counts)[0]
    width = _widths(counts[keys])
    classes, n_per = np.unique(width, return_counts=True)
    k1 = rank + 1
    # Merge sparse width classes upwards (into the next class's width) so calls stay few.
    merged: list[int] = []
    carry = 0
    for w, n in zip(classes.tolist(), n_per.tolist()):
        carry += n
        if carry >= _MIN_CLASS_KEYS or w == classes[-1]:
            merged.append(w)
            carry = 0
    class_of = np.asarray(merged)[np.searchsorted(merged, width)]
    by_class = np.argsort(class_of, kind="stable")
    bounds = np.searchsorted(class_of[by_class], merged, side="right")
    blocks = []
    lo_c = 0
    for w, hi_c in zip(merged, bounds.tolist()):
        members = keys[by_class[lo_c:hi_c]]
        lo_c = hi_c
        per_task = max(1, _TASK_DOUBLES // (w * k1))
        n_tasks = -(-len(members) // per_task)
        cuts = (np.arange(n_tasks + 1) * len(members)) // n_tasks
        blocks += [(members[lo:hi], w) for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist())]
    blocks.sort(key=lambda b: -len(b[0]) * b[1])  # largest first: balances the thread pool
    return _Grouping(keys=keys, counts=counts, starts=starts, order=order, blocks=blocks)


def _dense_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)``, via a presence table when the ids are small
    non-negative integers (the usual case), which avoids a sort.

    >>> _dense_index(np.array([7, 3, 7, 9]))
    (array([3, 7, 9]), array([1, 0, 1, 2], dtype=int32))
    """
    if len(ids) and ids.min() >= 0 and ids.max() < 4 * len(ids) + (1 << 20):
        present = np.zeros(int(ids.max()) + 1, dtype=bool)
        present[ids] = True
        unique = np.flatnonzero(present)
        position = np.cumsum(present) - 1
        return unique.astype(np.int64), np.take(position.astype(np.int32), ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, inverse.reshape(-1).astype(np.int32)


def _solve_block(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, reg_factor, reg_bias,
                 solution) -> None:
    """Solve the ridge systems of one block of keys with numpy and write their rows of
    ``solution``: keys padded to ``width`` (pad slots read the all-zero last row of ``feats``
    and target 0, which changes nothing), batched BLAS products, LU solves. Used when some
    penalty is zero (then primal form only: the dual needs D⁻¹) and for a block the compiled
    loop could not factor."""
    n_keys = len(keys)
    k1 = feats.shape[1]
    rank = k1 - 1
    offsets = np.arange(width)[None, :]
    valid = offsets < grouping.counts[keys][:, None]
    pos = np.where(valid, grouping.starts[keys][:, None] + offsets, 0)  # CSR positions
    rows = np.take(other_sorted, pos)
    x = np.take(feats, np.where(valid, rows, len(feats) - 1), axis=0)  # (B, w, k+1)
    y = np.where(valid, np.take(target_sorted, pos) - np.take(other_bias, rows), 0.0)  # (B, w)
    dual = width < k1 and bool(np.all(reg_factor[keys] > 0) and np.all(reg_bias[keys] > 0))
    if dual:
        inv_d = np.empty((n_keys, 1, k1))
        inv_d[:, 0, :rank] = (1.0 / np.take(reg_factor, keys))[:, None]
        inv_d[:, 0, rank] = 1.0 / np.take(reg_bias, keys)
        xs = x * inv_d  # X D⁻¹
        kernel = np.matmul(xs, x.transpose(0, 2, 1))  # X D⁻¹ Xᵀ, (B, w, w)
        kernel.reshape(n_keys, width * width)[:, :: width + 1] += 1.0
        alpha = np.linalg.solve(kernel, y[:, :, None])
        solution[keys] = np.matmul(xs.transpose(0, 2, 1), alpha)[:, :, 0]
    else:
        xt = x.transpose(0, 2, 1)
        gram = np.matmul(xt, x)  # numpy turns xᵀx on one buffer into BLAS syrk
        flat = gram.reshape(n_keys, k1 * k1)
        flat[:, : rank * (k1 + 1) : k1 + 1] += np.take(reg_factor, keys)[:, None]
        flat[:, -1] += np.take(reg_bias, keys)
        rhs = np.matmul(xt, y[:, :, None])
        solution[keys] = np.linalg.solve(gram, rhs)[:, :, 0]


def _solve_block_compiled(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, reg_factor,
                          reg_bias, solution) -> None:
    """`als_core.ridge.solve_keys` on one block (every penalty > 0); numpy LU if it fails.
    Imported here, on first use: loading numba and the compiled loop takes ~0.7 s, which
    commands that never fit a model should not pay."""
    from als_core.ridge import solve_keys

    if not solve_keys(keys, grouping.starts, grouping.counts, other_sorted, feats, other_bias, target_sorted,
                      reg_factor, reg_bias, solution):
        _solve_block(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, reg_factor, reg_bias,
                     solution)


def _solve_sorted(grouping: _Grouping, other: np.ndarray, other_bias: np.ndarray, other_sorted: np.ndarray,
                  target_sorted: np.ndarray, n_keys: int, reg_factor: np.ndarray, reg_bias: np.ndarray,
                  executor: Executor | None):
    """`solve_side` with the per-rating inputs already in ``grouping``'s CSR order; each
    rating's target is ``target_sorted - other_bias[its other index]``."""
    other = np.asarray(other, dtype=np.float64)
    rank = other.shape[1]
    # Features [other_j, 1], plus one all-zero row (the last) that numpy's padding points to.
    feats = np.zeros((other.shape[0] + 1, rank + 1))
    feats[:-1, :rank] = other
    feats[:-1, rank] = 1.0
    other_bias = np.asarray(other_bias, dtype=np.float64)
    reg_factor = np.asarray(reg_factor, dtype=np.float64)
    reg_bias = np.asarray(reg_bias, dtype=np.float64)
    solution = np.zeros((n_keys, rank + 1))
    # Positive penalties make every system positive definite: Cholesky, the compiled loop.
    positive = bool(np.all(reg_factor[grouping.keys] > 0) and np.all(reg_bias[grouping.keys] > 0))
    solve = _solve_block_compiled if positive else _solve_block
    tasks = [(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, reg_factor, reg_bias, solution)
             for keys, width in grouping.blocks]
    if executor is None or len(tasks) < 2:
        for task in tasks:
            solve(*task)
    else:
        for future in [executor.submit(solve, *task) for task in tasks]:
            future.result()
    return np.ascontiguousarray(solution[:, :rank]), solution[:, rank].copy()


def solve_side(
    grouping: _Grouping,
    other: np.ndarray,
    other_idx: np.ndarray,
    target: np.ndarray,
    n_keys: int,
    reg_factor: np.ndarray,
    reg_bias: np.ndarray,
    *,
    executor: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One half-step: for every key, the ridge solution of ``[x, b]`` in
    ``target ≈ other[j]·x + b`` over its ratings, penalties ``reg_factor[key] |x|²`` and
    ``reg_bias[key] b²``. Returns (factors (n_keys, k), biases (n_keys,)); keys without
    ratings get zeros. Blocks run on ``executor`` when given (results do not depend on it).

    >>> g = _group(np.array([0, 0, 1]), 2, rank=1)
    >>> f, b = solve_side(g, np.array([[1.0], [2.0]]), np.array([0, 1, 0]), np.array([1.0, 2.0, 3.0]),
    ...                   2, np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    >>> np.round(f[:, 0], 4).tolist(), np.round(b, 4).tolist()   # key 0: [[6, 3], [3, 3]] [x, b] = [5, 3]
    ([0.6667, 1.0], [0.3333, 1.0])
    """
    other_sorted = np.take(np.asarray(other_idx, dtype=np.int32), grouping.order)
    target_sorted = np.take(np.asarray(target, dtype=np.float64), grouping.order)
    no_bias = np.zeros(len(other))
    with _single_threaded_blas():
        return _solve_sorted(grouping, other, no_bias, other_sorted, target_sorted, n_keys, reg_factor, reg_bias,
                             executor)


def load_compiled() -> None:
    """Import the compiled loops (`als_core.csr`, `als_core.ridge`: numba, ~0.7 s, or their
    one-off compile on a fresh install) now instead of inside the first fit, for callers that
    time fits. `fit_als` imports them on first use."""
    import als_core.csr  # noqa: F401
    import als_core.ridge  # noqa: F401


def _single_threaded_blas():
    """Context: every BLAS library of the process (numpy's and SciPy's OpenBLAS) on one thread.
    Our blocks are the parallelism; OpenBLAS threads started by a large call would compete
    with them and spin-wait after it (measured: a 4M-rating rank-10 fit took 5.3-5.6 s with
    them, 4.0-4.2 s without), and their work split would make round-off depend on the
    machine's core count. Process-wide while it lasts (~2 ms to enter)."""
    return threadpool_limits(limits=1, user_api="blas")


def als_loss(model: FactorModel, u_idx, i_idx, ratings, params: ALSParams, u_counts, i_counts) -> float:
    """The objective ALS minimises (see the module docstring)."""
    pred = (
        model.mu
        + model.user_bias[u_idx]
        + model.item_bias[i_idx]
        + np.einsum("ij,ij->i", model.user_factors[u_idx], model.item_factors[i_idx])
    )
    wu = u_counts if params.weighted_lambda else 1.0
    wi = i_counts if params.weighted_lambda else 1.0
    return float(
        np.sum((ratings - pred) ** 2)
        + params.lambda_ * (np.sum(wu * np.sum(model.user_factors**2, axis=1)) + np.sum(wi * np.sum(model.item_factors**2, axis=1)))
        + params.lambda_bias * (np.sum(model.user_bias**2) + np.sum(model.item_bias**2))
    )


def default_threads() -> int:
    """Worker threads for `fit_als`: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def fit_als(users, items, ratings, params: ALSParams | None = None, *, callback=None, threads: int | None = None,
            **overrides) -> FactorModel:
    """Fit batch ALS. ``callback(iteration, loss)`` is called after each full iteration.
    ``threads`` (default: `default_threads`) only changes speed, never the result."""
    params = ALSParams(**{**(params.__dict__ if params else {}), **overrides})
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    if len(ratings) == 0:
        raise ValueError("batch ALS needs at least one rating")
    if len(ratings) > _MAX_RATINGS:
        raise ValueError(f"batch ALS indexes ratings with 32-bit integers: at most {_MAX_RATINGS:,} ratings, "
                         f"got {len(ratings):,}")
    user_ids, u_idx = _dense_index(users)
    item_ids, i_idx = _dense_index(items)
    n_u, n_i = len(user_ids), len(item_ids)
    by_user = _group(u_idx, n_u, params.rank)
    by_item = _group(i_idx, n_i, params.rank)
    mu = float(ratings.mean())
    # Each half-step reads the ratings in its side's CSR order: permute once, read sequentially.
    # The other side's bias is subtracted per rating inside the solve (no per-step array).
    items_by_user, centred_by_user = np.take(i_idx, by_user.order), np.take(ratings, by_user.order)
    users_by_item, centred_by_item = np.take(u_idx, by_item.order), np.take(ratings, by_item.order)
    centred_by_user -= mu  # in place: no second per-rating array to allocate
    centred_by_item -= mu
    model = FactorModel(
        mu=mu,
        user_ids=user_ids,
        user_bias=np.zeros(n_u),
        user_factors=np.zeros((n_u, params.rank)),
        item_ids=item_ids,
        item_bias=np.zeros(n_i),
        item_factors=init_vectors(params.seed, SIDE_ITEM, item_ids, params.rank, params.init_scale),
        user_counts=by_user.counts,
        item_counts=by_item.counts,
        n_ratings=len(ratings),
    )
    reg_u = params.lambda_ * (by_user.counts if params.weighted_lambda else np.ones(n_u))
    reg_i = params.lambda_ * (by_item.counts if params.weighted_lambda else np.ones(n_i))
    bias_u = np.full(n_u, params.lambda_bias)
    bias_i = np.full(n_i, params.lambda_bias)
    threads = default_threads() if threads is None else max(1, int(threads))
    if len(ratings) * (params.rank + 1) < _PARALLEL_MIN_DOUBLES:
        threads = 1
    executor = ThreadPoolExecutor(threads, thread_name_prefix="als") if threads > 1 else None
    previous = None
    try:
        with _single_threaded_blas():
            for it in range(params.iterations):
                model.user_factors, model.user_bias = _solve_sorted(
                    by_user, model.item_factors, model.item_bias, items_by_user, centred_by_user, n_u, reg_u, bias_u,
                    executor,
                )
                model.item_factors, model.item_bias = _solve_sorted(
                    by_item, model.user_factors, model.user_bias, users_by_item, centred_by_item, n_i, reg_i, bias_i,
                    executor,
                )
                if callback is not None or params.tol is not None:
                    loss = als_loss(model, u_idx, i_idx, ratings, params, by_user.counts, by_item.counts)
                    if callback is not None:
                        callback(it, loss)
                    if params.tol is not None and previous is not None and (previous - loss) <= params.tol * previous:
                        break
                    previous = loss
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    return model


__all__ = ["ALSParams", "fit_als", "solve_side", "als_loss", "default_threads", "load_compiled", "SIDE_USER"]
