"""Ratings grouped per key (CSR order) by a compiled counting sort.

``csr_order(key_idx, starts)`` is ``np.argsort(key_idx, kind="stable")`` when ``starts``
holds each key's first position (the exclusive cumulative sum of its counts), in one
O(n) pass. numpy's stable argsort is a radix sort for 16-bit keys only and a timsort
otherwise: on 20M ratings with 200k users it took 3.2-3.9 s here, against 0.25 s for this
loop, and it was most of what made batch ALS grow faster than linearly in ratings
(docs/BENCHMARKS.md, "Scaling").

>>> key_idx = np.array([2, 0, 2, 1, 0])
>>> counts = np.bincount(key_idx)
>>> csr_order(key_idx, np.concatenate(([0], np.cumsum(counts)[:-1]))).tolist()
[1, 4, 3, 0, 2]
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit("void(i4[:], i8[:], i4[:])", nogil=True, cache=True)
def _scatter_positions(key_idx, next_position, order):
    for j in range(key_idx.shape[0]):
        key = key_idx[j]
        order[next_position[key]] = j
        next_position[key] += 1


def csr_order(key_idx: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Rating positions sorted by key, stable (see the module docstring)."""
    key_idx = np.ascontiguousarray(key_idx, dtype=np.int32)
    order = np.empty(len(key_idx), dtype=np.int32)  # positions < 2**31: als.fit_als checks
    _scatter_positions(key_idx, np.array(starts, dtype=np.int64), order)  # a copy: the loop advances it
    return order


__all__ = ["csr_order"]
