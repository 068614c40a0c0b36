"""Train/test splits and the deterministic holdout flag.

>>> import pyarrow as pa
>>> t = pa.table({"user_id": [1, 2, 3, 4], "item_id": [1, 1, 2, 2],
...               "rating": [4.0, 3.0, 5.0, 1.0], "rated_at": [40, 10, 30, 20]})
>>> train, test = temporal_split(t, 0.5)
>>> train["rated_at"].to_pylist(), test["rated_at"].to_pylist()
([10, 20], [30, 40])
>>> train, test = random_split(t, 0.75, seed=42)
>>> train.num_rows, test.num_rows
(3, 1)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from als_core.init import P, _mix


def random_split(ratings: pa.Table, train_fraction: float = 0.8, seed: int = 42) -> tuple[pa.Table, pa.Table]:
    """Permute the rows (in file order) with ``numpy.random.default_rng(seed)``; the first
    ``train_fraction`` of the permutation trains, the rest tests. This is the protocol every
    accuracy figure of the project uses."""
    _check_fraction(train_fraction)
    order = np.random.default_rng(seed).permutation(ratings.num_rows)
    n_train = int(round(train_fraction * ratings.num_rows))
    return ratings.take(order[:n_train]), ratings.take(order[n_train:])


def temporal_split(ratings: pa.Table, train_fraction: float = 0.8) -> tuple[pa.Table, pa.Table]:
    """Sort by rated_at (stable: ties keep file order; rows without a time go last) and cut:
    the oldest ``train_fraction`` trains, the newest rows test."""
    _check_fraction(train_fraction)
    order = time_order(ratings)
    n_train = int(round(train_fraction * ratings.num_rows))
    return ratings.take(order[:n_train]), ratings.take(order[n_train:])


def time_order(ratings: pa.Table) -> np.ndarray:
    """Row indices in time order (stable; null rated_at last)."""
    ts = ratings["rated_at"].to_numpy(zero_copy_only=False)
    ts = np.where(np.isnan(ts.astype(np.float64)), np.inf, ts.astype(np.float64))
    return np.argsort(ts, kind="stable")


def holdout_mask(user_ids, item_ids, fraction: float, salt: int = 0) -> np.ndarray:
    """True for the (user, item) pairs that belong to the holdout set.

    Depends only on (user, item, salt), never on file order or batch, so the same pair always
    lands on the same side. Same arithmetic as `sql/` could use: `init.P`-based mixing.

    >>> bool(holdout_mask([5], [7], 0.5)[0]) == bool(holdout_mask([5], [7], 0.5)[0])
    True
    >>> round(float(holdout_mask(range(10000), [1] * 10000, 0.2).mean()), 1)
    0.2
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    users = np.asarray(user_ids, dtype=np.int64)
    items = np.asarray(item_ids, dtype=np.int64)
    h = np.full(users.shape, (salt % P) + 1, dtype=np.int64)
    for part in (users % 2_147_483_648, users // 2_147_483_648, items % 2_147_483_648, items // 2_147_483_648):
        h = _mix(h, part)
    return (h / P) < fraction


def with_holdout(ratings: pa.Table, fraction: float, salt: int = 0) -> pa.Table:
    """The ratings with a boolean ``holdout`` column from `holdout_mask`."""
    mask = holdout_mask(
        ratings["user_id"].to_numpy(zero_copy_only=False), ratings["item_id"].to_numpy(zero_copy_only=False), fraction, salt
    )
    return ratings.append_column("holdout", pa.array(mask, type=pa.bool_()))


def _check_fraction(f: float) -> None:
    if not 0.0 < f < 1.0:
        raise ValueError(f"train fraction must be strictly between 0 and 1, got {f}")


__all__ = ["random_split", "temporal_split", "time_order", "holdout_mask", "with_holdout"]
