"""Deterministic initial values for unseen users and items.

Every engine (numpy, DuckDB SQL, Spark SQL) must give a new id the *same* random vector, so
the generator is integer arithmetic that all three evaluate exactly: a few rounds of
multiply / square / add modulo the Mersenne prime P = 2^31 - 1. Every intermediate stays
below 2^62, so BIGINT never overflows in any engine and no bit operation (whose SQL spelling
differs between dialects) is needed. Spark evaluates the SQL twin written by
`als_core.engines.sqlgen.init_vector_sql`; the DuckDB engine calls `init_vectors` itself.

The value of component k of the vector of (seed, side, id) is
``init_scale * (2 * h(seed, side, id, k) / P - 1)``, uniform in [-init_scale, init_scale).
Biases of unseen ids start at 0.

>>> v = init_vectors(seed=42, side=SIDE_USER, ids=np.array([1, 2]), rank=3, init_scale=0.1)
>>> v.shape
(2, 3)
>>> bool(np.all(np.abs(v) <= 0.1))
True
>>> np.array_equal(v, init_vectors(42, SIDE_USER, np.array([1, 2]), 3, 0.1))
True
"""

from __future__ import annotations

import numpy as np

P = 2_147_483_647  # 2^31 - 1
SIDE_GLOBAL, SIDE_USER, SIDE_ITEM = 0, 1, 2
SIDE_CODES = {"global": SIDE_GLOBAL, "user": SIDE_USER, "item": SIDE_ITEM}

# Multipliers below P; any fixed choice works, these are well-known LCG multipliers.
A1, A2, A3 = 48_271, 69_621, 16_807
C1, C2 = 12_345, 1_013_904_223 % P


def _mix(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One round: absorb x (< 2^32) into h (< P). Squaring makes it non-linear."""
    h = (h + x % P) % P * A1 % P
    h = (h * h + C1) % P
    h = (h * A2 + C2) % P
    return (h * h + x % P) % P


def key_hash(seed: int, side: int, ids: np.ndarray) -> np.ndarray:
    """Hash of (seed, side, id) in [0, P), the per-key base every component derives from.

    Ids are split into 31-bit halves so any non-negative int64 id is absorbed exactly.
    """
    ids = np.asarray(ids, dtype=np.int64)
    h = np.full(ids.shape, (seed % P) * A3 % P, dtype=np.int64)
    h = _mix(h, np.full(ids.shape, side, dtype=np.int64))
    h = _mix(h, ids % 2_147_483_648)
    return _mix(h, ids // 2_147_483_648)


def component_hash(base: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Hash of (base, component index k) in [0, P)."""
    return _mix(base, k)


def init_vectors(seed: int, side: int, ids: np.ndarray, rank: int, init_scale: float) -> np.ndarray:
    """Initial factor vectors (float64, shape (len(ids), rank)) for the given ids."""
    base = key_hash(seed, side, ids)[:, None]
    k = np.arange(rank, dtype=np.int64)[None, :]
    h = component_hash(np.broadcast_to(base, (base.shape[0], rank)), np.broadcast_to(k, (base.shape[0], rank)))
    return init_scale * (2.0 * (h / P) - 1.0)
