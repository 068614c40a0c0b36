"""Reference streaming biased SGD in numpy: the oracle the SQL engines must match.

Mini-batch step (``minibatch_step``), exactly the update of DESIGN.md: every gradient is computed
from the factors as they were before the batch, then summed (or averaged) per key.

    μ      ← running mean of every rating seen, this batch included (μ is a statistic, not learned)
    e      = r − (μ + b_u + b_i + U_u·P_i)
    ΔU_u   = γ (e P_i − λ U_u)          ΔP_i = γ (e U_u − λ P_i)
    U_u    ← U_u + Σ ΔU_u  (aggregation 'sum')  or  + mean ΔU_u  ('mean')

Biases have two update rules (``bias_update``):

* ``'sgd'``: the literal rule, Δb = γ (e − λ_b b), aggregated like the vectors.
* ``'running_mean'``: the closed-form damped running mean, ``b ← b + Σ_batch e / (n + n_batch + λ_b)``
  with n the key's ratings seen before. It is what a per-key step size 1/(n + n_batch + λ_b)
  turns the sum rule into, needs no state beyond the count column, and is what makes one pass
  over a stream competitive with batch ALS (see docs/streaming.md).

Unseen ids start with the deterministic vector of `als_core.init` and bias 0. With
``store_float32`` the vectors are rounded to float32 after each step, as the Delta store keeps them.

>>> p = SGDParams(rank=2, gamma=0.1, lambda_=0.0, lambda_bias=0.0, init_scale=0.0)
>>> m = minibatch_step(empty_model(2), [1, 1, 2], [10, 20, 10], [4.0, 2.0, 3.0], p)
>>> m.mu, m.user_bias.tolist(), m.item_bias.tolist()      # μ = 3; errors 1, -1, 0
(3.0, [0.0, 0.0], [0.1, -0.1])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from als_core.init import SIDE_ITEM, SIDE_USER, init_vectors
from als_core.model import FactorModel, lookup

AGGREGATIONS = ("sum", "mean")
BIAS_UPDATES = ("sgd", "running_mean")


@dataclass(frozen=True)
class SGDParams:
    rank: int = 10
    gamma: float = 0.05
    lambda_: float = 0.05
    lambda_bias: float = 0.05
    init_scale: float = 0.1
    seed: int = 42
    aggregation: str = "mean"
    bias_update: str = "sgd"

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.bias_update not in BIAS_UPDATES:
            raise ValueError(f"bias_update must be one of {BIAS_UPDATES}, got {self.bias_update!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


def empty_model(rank: int) -> FactorModel:
    """A model that has seen nothing: μ = 0, no users, no items."""
    return FactorModel(
        mu=0.0,
        user_ids=np.zeros(0, np.int64), user_bias=np.zeros(0), user_factors=np.zeros((0, rank)),
        item_ids=np.zeros(0, np.int64), item_bias=np.zeros(0), item_factors=np.zeros((0, rank)),
        user_counts=np.zeros(0, np.int64), item_counts=np.zeros(0, np.int64), n_ratings=0,
    )


def _add_unseen(ids, bias, factors, counts, new_ids, seed, side, init_scale):
    """Insert ``new_ids`` not yet in ``ids`` (keeping ids sorted) with their initial values."""
    _, known = lookup(ids, new_ids)
    unseen = np.unique(new_ids[~known])
    if len(unseen) == 0:
        return ids, bias, factors, counts
    all_ids = np.concatenate([ids, unseen])
    order = np.argsort(all_ids, kind="stable")
    vec = init_vectors(seed, side, unseen, factors.shape[1], init_scale)
    return (
        all_ids[order],
        np.concatenate([bias, np.zeros(len(unseen))])[order],
        np.concatenate([factors, vec])[order],
        np.concatenate([counts, np.zeros(len(unseen), np.int64)])[order],
    )


def minibatch_step(model: FactorModel, users, items, ratings, params: SGDParams, *, store_float32: bool = False) -> FactorModel:
    """Apply one micro-batch; returns a new model (the input is not modified)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    if len(ratings) == 0:
        return model
    uc = model.user_counts if model.user_counts is not None else np.zeros(len(model.user_ids), np.int64)
    ic = model.item_counts if model.item_counts is not None else np.zeros(len(model.item_ids), np.int64)
    u_ids, u_bias, u_vec, u_cnt = _add_unseen(model.user_ids, model.user_bias, model.user_factors, uc, users, params.seed, SIDE_USER, params.init_scale)
    i_ids, i_bias, i_vec, i_cnt = _add_unseen(model.item_ids, model.item_bias, model.item_factors, ic, items, params.seed, SIDE_ITEM, params.init_scale)
    if store_float32:  # fresh vectors enter the store as float32 too
        u_vec, i_vec = u_vec.astype(np.float32).astype(np.float64), i_vec.astype(np.float32).astype(np.float64)
    u = np.searchsorted(u_ids, users)
    i = np.searchsorted(i_ids, items)

    n_total = model.n_ratings + len(ratings)
    mu = (model.mu * model.n_ratings + ratings.sum()) / n_total
    err = ratings - (mu + u_bias[u] + i_bias[i] + np.einsum("ij,ij->i", u_vec[u], i_vec[i]))

    n_u = np.bincount(u, minlength=len(u_ids))
    n_i = np.bincount(i, minlength=len(i_ids))
    g = params.gamma
    grad_u = np.zeros_like(u_vec)
    np.add.at(grad_u, u, g * (err[:, None] * i_vec[i] - params.lambda_ * u_vec[u]))
    grad_i = np.zeros_like(i_vec)
    np.add.at(grad_i, i, g * (err[:, None] * u_vec[u] - params.lambda_ * i_vec[i]))
    err_u = np.bincount(u, weights=err, minlength=len(u_ids))
    err_i = np.bincount(i, weights=err, minlength=len(i_ids))
    if params.bias_update == "running_mean":
        d_bu = err_u / (u_cnt + n_u + params.lambda_bias)
        d_bi = err_i / (i_cnt + n_i + params.lambda_bias)
    else:
        d_bu = g * (err_u - params.lambda_bias * n_u * u_bias)
        d_bi = g * (err_i - params.lambda_bias * n_i * i_bias)
    if params.aggregation == "mean":
        grad_u /= np.maximum(n_u, 1)[:, None]
        grad_i /= np.maximum(n_i, 1)[:, None]
        if params.bias_update == "sgd":
            d_bu, d_bi = d_bu / np.maximum(n_u, 1), d_bi / np.maximum(n_i, 1)
    u_vec = u_vec + grad_u
    i_vec = i_vec + grad_i
    if store_float32:
        u_vec, i_vec = u_vec.astype(np.float32).astype(np.float64), i_vec.astype(np.float32).astype(np.float64)
    return FactorModel(
        mu=float(mu), n_ratings=int(n_total),
        user_ids=u_ids, user_bias=u_bias + d_bu, user_factors=u_vec, user_counts=u_cnt + n_u,
        item_ids=i_ids, item_bias=i_bias + d_bi, item_factors=i_vec, item_counts=i_cnt + n_i,
    )


def replay(users, items, ratings, params: SGDParams, batch_size: int = 1000, model: FactorModel | None = None,
           *, store_float32: bool = False, callback=None) -> FactorModel:
    """Stream the ratings (in the given order) through `minibatch_step` in batches.
    ``callback(batch_index, model)`` is called after each batch."""
    users, items, ratings = np.asarray(users), np.asarray(items), np.asarray(ratings, dtype=np.float64)
    model = model if model is not None else empty_model(params.rank)
    for b, start in enumerate(range(0, len(ratings), batch_size)):
        sl = slice(start, start + batch_size)
        model = minibatch_step(model, users[sl], items[sl], ratings[sl], params, store_float32=store_float32)
        if callback is not None:
            callback(b, model)
    return model


def sequential_sgd(users, items, ratings, params: SGDParams, model: FactorModel | None = None, epochs: int = 1) -> FactorModel:
    """Classic per-rating SGD (Funk/Koren): each rating updates its user and item at once, so
    the next rating sees the new values. A Python loop: this is a reference, not a hot path.

    >>> m = sequential_sgd([1, 1], [5, 5], [4.0, 4.0], SGDParams(rank=1, gamma=0.5, lambda_bias=0, init_scale=0))
    >>> round(m.mu, 6), round(float(m.user_bias[0] + m.item_bias[0]), 6)   # 2nd rating sees the 1st
    (4.0, 0.0)
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    ratings = np.asarray(ratings, np.float64)
    model = model if model is not None else empty_model(params.rank)
    model = minibatch_step(model, users[:0], items[:0], ratings[:0], params)
    uc = model.user_counts if model.user_counts is not None else np.zeros(len(model.user_ids), np.int64)
    ic = model.item_counts if model.item_counts is not None else np.zeros(len(model.item_ids), np.int64)
    u_ids, bu, U, uc = _add_unseen(model.user_ids, model.user_bias, model.user_factors, uc, users, params.seed, SIDE_USER, params.init_scale)
    i_ids, bi, P, ic = _add_unseen(model.item_ids, model.item_bias, model.item_factors, ic, items, params.seed, SIDE_ITEM, params.init_scale)
    bu, bi, U, P, uc, ic = bu.copy(), bi.copy(), U.copy(), P.copy(), uc.copy(), ic.copy()
    u_all, i_all = np.searchsorted(u_ids, users), np.searchsorted(i_ids, items)
    mu, n = model.mu, model.n_ratings
    g, lam, lamb = params.gamma, params.lambda_, params.lambda_bias
    for _ in range(epochs):
        for u, i, r in zip(u_all.tolist(), i_all.tolist(), ratings.tolist()):
            if _ == 0:
                n += 1
                mu += (r - mu) / n
            e = r - (mu + bu[u] + bi[i] + U[u] @ P[i])
            uc[u] += 1
            ic[i] += 1
            if params.bias_update == "running_mean":
                bu[u] += e / (uc[u] + lamb)
                bi[i] += e / (ic[i] + lamb)
            else:
                bu[u] += g * (e - lamb * bu[u])
                bi[i] += g * (e - lamb * bi[i])
            U[u], P[i] = U[u] + g * (e * P[i] - lam * U[u]), P[i] + g * (e * U[u] - lam * P[i])
    return replace(model, mu=float(mu), n_ratings=int(n), user_ids=u_ids, user_bias=bu, user_factors=U, user_counts=uc,
                   item_ids=i_ids, item_bias=bi, item_factors=P, item_counts=ic)


def warm_start(batch_model: FactorModel) -> FactorModel:
    """A streaming starting point from a batch ALS model (keeps its counts, so running-mean
    biases continue with the right weights)."""
    return replace(
        batch_model,
        user_counts=batch_model.user_counts if batch_model.user_counts is not None else np.zeros(len(batch_model.user_ids), np.int64),
        item_counts=batch_model.item_counts if batch_model.item_counts is not None else np.zeros(len(batch_model.item_ids), np.int64),
    )
