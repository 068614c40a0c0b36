"""The factor model every trainer produces and every scorer reads.

Prediction: ``r̂(u, i) = μ + b_u + b_i + U_u · P_i``.
Cold-start rule: an unknown user has U = 0 and b_u = 0 (likewise an unknown item), so the
prediction falls back to ``μ + the known bias`` (just μ when both are unknown).

>>> m = FactorModel(mu=3.0,
...     user_ids=np.array([10]), user_bias=np.array([0.5]), user_factors=np.array([[1.0, 0.0]]),
...     item_ids=np.array([7]), item_bias=np.array([-0.25]), item_factors=np.array([[0.5, 2.0]]))
>>> m.predict([10, 10, 99], [7, 8, 7]).tolist()   # known pair, unknown item, unknown user
[3.75, 3.5, 2.75]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FactorModel:
    mu: float
    user_ids: np.ndarray  # int64, sorted ascending
    user_bias: np.ndarray  # float64 (n_users,)
    user_factors: np.ndarray  # float64 (n_users, rank)
    item_ids: np.ndarray
    item_bias: np.ndarray
    item_factors: np.ndarray
    user_counts: np.ndarray | None = field(default=None, repr=False)  # ratings seen per user
    item_counts: np.ndarray | None = field(default=None, repr=False)
    n_ratings: int = 0  # ratings behind mu

    @property
    def rank(self) -> int:
        return int(self.user_factors.shape[1])

    def predict(self, users, items, clip: tuple[float, float] | None = None) -> np.ndarray:
        """Predicted ratings for (user, item) pairs, with the cold-start rule above."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        u_idx, u_known = lookup(self.user_ids, users)
        i_idx, i_known = lookup(self.item_ids, items)
        pred = np.full(users.shape, self.mu, dtype=np.float64)
        pred[u_known] += self.user_bias[u_idx[u_known]]
        pred[i_known] += self.item_bias[i_idx[i_known]]
        both = u_known & i_known
        pred[both] += np.einsum(
            "ij,ij->i", self.user_factors[u_idx[both]], self.item_factors[i_idx[both]]
        )
        if clip is not None:
            np.clip(pred, clip[0], clip[1], out=pred)
        return pred


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids`` and whether each was found.

    >>> lookup(np.array([2, 5, 9]), np.array([5, 3, 9]))
    (array([1, 1, 2]), array([ True, False,  True]))
    """
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids
