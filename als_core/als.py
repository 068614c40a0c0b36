"""Batch ALS for explicit feedback, with biases, in numpy.

Minimises ``Σ (r - μ - b_u - b_i - U_u·P_i)² + λ Σ w_u |U_u|² + λ Σ w_i |P_i|² + λ_b Σ b²``
(w = 1, or the rating count with ``weighted_lambda`` as in Spark's ALS-WR) by alternating
closed-form solves: with the items fixed, each user's ``[U_u, b_u]`` is one ridge regression
on the features ``[P_i, 1]`` of the items it rated, and vice versa. μ is the training mean.

Vectorised: ratings are grouped per key (CSR order), keys with similar counts are padded into
one block, and each block's Gram matrices and right-hand sides come from batched matmuls and
are solved by one batched ``numpy.linalg.solve`` call. No Python loop runs per user.

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

from dataclasses import dataclass

import numpy as np

from als_core.init import SIDE_ITEM, SIDE_USER, init_vectors
from als_core.model import FactorModel

# Padded entries per solve block: bounds memory at ~ this x (rank+1) x 8 bytes.
_BLOCK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class ALSParams:
    rank: int = 10
    iterations: int = 10
    lambda_: float = 0.1
    lambda_bias: float = 0.1
    init_scale: float = 0.1
    seed: int = 42
    weighted_lambda: bool = False
    tol: float | None = None  # stop early when the relative loss drop falls below tol


@dataclass
class _Grouping:
    """Ratings of one side grouped per key, padded into blocks of similar length."""

    keys: np.ndarray  # dense key index per group, in block order
    counts: np.ndarray  # ratings per key (dense index order)
    blocks: list[tuple[np.ndarray, np.ndarray]]  # (key indices (B,), rating positions (B, L), -1 = pad)


def _group(key_idx: np.ndarray, n_keys: int) -> _Grouping:
    order = np.argsort(key_idx, kind="stable")
    counts = np.bincount(key_idx, minlength=n_keys)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keys = np.nonzero(counts)[0]
    # Bucket keys by the next power of two of their count: padding wastes < 2x.
    width = 1 << np.ceil(np.log2(counts[keys])).astype(np.int64)
    blocks = []
    for w in np.unique(width):
        members = keys[width == w]
        per_block = max(1, _BLOCK_ENTRIES // int(w))
        for lo in range(0, len(members), per_block):
            chunk = members[lo : lo + per_block]
            offsets = np.arange(w)[None, :]
            pos = starts[chunk][:, None] + offsets
            valid = offsets < counts[chunk][:, None]
            blocks.append((chunk, np.where(valid, order[np.minimum(pos, len(order) - 1)], -1)))
    return _Grouping(keys=keys, counts=counts, blocks=blocks)


def solve_side(
    grouping: _Grouping,
    other: np.ndarray,
    other_idx: np.ndarray,
    target: np.ndarray,
    n_keys: int,
    reg_factor: np.ndarray,
    reg_bias: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One half-step: for every key, the ridge solution of ``[x, b]`` in
    ``target ≈ other[j]·x + b`` over its ratings, penalties ``reg_factor[key] |x|²`` and
    ``reg_bias[key] b²``. Returns (factors (n_keys, k), biases (n_keys,)); keys without
    ratings get zeros."""
    rank = other.shape[1]
    # Features [other_j, 1], plus one all-zero row that padding points to.
    feats = np.zeros((other.shape[0] + 1, rank + 1))
    feats[:-1, :rank] = other
    feats[:-1, rank] = 1.0
    pad_row = other.shape[0]
    rating_feat = np.append(other_idx, pad_row)
    rating_target = np.append(target, 0.0)
    solution = np.zeros((n_keys, rank + 1))
    diag = np.arange(rank + 1)
    for keys, pos in grouping.blocks:
        # np.take is several times faster than fancy indexing for these gathers.
        x = np.take(feats, np.take(rating_feat, pos), axis=0)  # (B, L, k+1); pos -1 -> pad row
        y = np.take(rating_target, pos)  # (B, L); pad -> 0
        gram = np.einsum("bli,blj->bij", x, x, optimize=True)
        gram[:, diag[:rank], diag[:rank]] += reg_factor[keys][:, None]
        gram[:, rank, rank] += reg_bias[keys]
        rhs = np.einsum("bli,bl->bi", x, y, optimize=True)
        solution[keys] = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    return solution[:, :rank], solution[:, rank]


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


def fit_als(users, items, ratings, params: ALSParams | None = None, *, callback=None, **overrides) -> FactorModel:
    """Fit batch ALS. ``callback(iteration, loss)`` is called after each full iteration."""
    params = ALSParams(**{**(params.__dict__ if params else {}), **overrides})
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    if len(ratings) == 0:
        raise ValueError("batch ALS needs at least one rating")
    user_ids, u_idx = np.unique(users, return_inverse=True)
    item_ids, i_idx = np.unique(items, return_inverse=True)
    n_u, n_i = len(user_ids), len(item_ids)
    by_user, by_item = _group(u_idx, n_u), _group(i_idx, n_i)
    mu = float(ratings.mean())
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
    previous = None
    for it in range(params.iterations):
        model.user_factors, model.user_bias = solve_side(
            by_user, model.item_factors, i_idx, ratings - mu - model.item_bias[i_idx], n_u, reg_u, bias_u
        )
        model.item_factors, model.item_bias = solve_side(
            by_item, model.user_factors, u_idx, ratings - mu - model.user_bias[u_idx], n_i, reg_i, bias_i
        )
        if callback is not None or params.tol is not None:
            loss = als_loss(model, u_idx, i_idx, ratings, params, by_user.counts, by_item.counts)
            if callback is not None:
                callback(it, loss)
            if params.tol is not None and previous is not None and (previous - loss) <= params.tol * previous:
                break
            previous = loss
    return model


__all__ = ["ALSParams", "fit_als", "solve_side", "als_loss", "SIDE_USER"]
