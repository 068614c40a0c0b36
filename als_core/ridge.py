"""The per-key ridge regressions of batch ALS as one compiled loop (numba over BLAS/LAPACK).

Each key (a user, or an item) solves ``(XᵀX + D) [x, b] = Xᵀy`` over the features
``X = [other_j, 1]`` of its n ratings, D = diag(reg_factor, ..., reg_factor, reg_bias) > 0.
Per key the loop gathers X into one scratch buffer (at most ``_CHUNK_RATINGS`` rows, so it
stays in cache) and then:

* n ≥ rank + 1 (primal): ``XᵀX`` and ``Xᵀy`` (by BLAS ``syrk`` and ``gemv``, or for ranks up
  to 15 by compiled dot products, `_gram_by_dots`), accumulated chunk by chunk for keys with
  more ratings than the buffer holds, then a Cholesky solve by LAPACK ``posv``. (Gathering
  a key's millions of ratings at once spilled the buffer out of cache: on 20M synthetic
  ratings those keys cost 103 ns per rating instead of 79 ns chunked.)
* n < rank + 1 (dual, push-through identity): with ``Z = X D^-½``, solve
  ``(ZZᵀ + I) α = y`` (an n x n system) and return ``D^-½ Zᵀ α``.

Why compiled: numpy's batched calls need every key padded to its block's width and the whole
block's features gathered in memory, and ``numpy.linalg.solve`` runs LU with pivoting on a
copy; numpy has no batched Cholesky. A Python loop per key would cost more than it saves.
Here each key costs only its own arithmetic, and reads its ratings sequentially (CSR order).
Measured against the numpy blocks (docs/BENCHMARKS.md, interleaved runs, 2 threads): rank 50
on MovieLens 100k 0.29-0.41 s instead of 0.45-0.64 s; rank 10 on 4M synthetic ratings
3.9-4.0 s instead of 7.4 s.

The BLAS and LAPACK are SciPy's (``scipy.linalg.cython_blas`` / ``cython_lapack`` publish
their addresses); they are registered under our own symbol names so numba can cache the
compiled loop on disk instead of compiling it in every process. Each key is solved on its
own, so results do not depend on blocking or threads. Storage is column-major throughout (a
row-major (n, k) gather is the Fortran matrix Xᵀ; symmetric matrices read the same both ways).

>>> keys, starts, counts = np.array([0]), np.array([0]), np.array([3])  # key 0: ratings 0..2
>>> other_rows = np.array([0, 1, 2])                                   # the rows they rated
>>> feats = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])              # [factor (rank 1), 1]
>>> target = np.array([2.0, 4.0, 6.0])
>>> solution = np.zeros((1, 2))
>>> no_bias = np.zeros(3)
>>> solve_keys(keys, starts, counts, other_rows, feats, no_bias, target, np.array([1e-9]), np.array([1e-9]), solution)
True
>>> np.round(solution, 6).tolist()                                      # target = 2 * factor + 0
[[2.0, 0.0]]
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.extending import get_cython_function_address

for _module, _name in (("cython_lapack", "dposv"), ("cython_blas", "dsyrk"), ("cython_blas", "dgemv")):
    llvm.add_symbol(f"als_core_{_name}", get_cython_function_address(f"scipy.linalg.{_module}", _name))
_ptr = types.voidptr  # Fortran calling convention: every argument by pointer
_dposv = types.ExternalFunction("als_core_dposv", types.void(*[_ptr] * 8))
_dsyrk = types.ExternalFunction("als_core_dsyrk", types.void(*[_ptr] * 10))
_dgemv = types.ExternalFunction("als_core_dgemv", types.void(*[_ptr] * 11))


# Ratings gathered at a time: 2,048 x (rank + 1) doubles stay in L2 at rank 10 (256-rating
# chunks were slower: per-call overhead).
_CHUNK_RATINGS = 2048


# Up to this many features (rank + 1) the primal Gram matrix and Xᵀy are dot products of
# feature-major rows, compiled with reassociation so LLVM vectorises them: at rank 10, 6-9 ns
# per rating against 20-23 ns for OpenBLAS syrk (keys of 100-2,048 ratings, one thread). At
# rank 30 and more syrk is as fast or faster on the short keys that dominate.
_DOT_GRAM_MAX_K1 = 16


@njit(nogil=True, cache=True)
def _gather(other_rows, feats, other_bias, target, start, m, out, y, feature_major):
    """Ratings ``start .. start + m`` (CSR order): their features into ``out`` (row-major
    (m, k1), or feature-major (k1, m) for `_gram_by_dots`) and their targets minus the other
    side's bias into ``y``."""
    for j in range(m):
        row = other_rows[start + j]
        for c in range(feats.shape[1]):
            if feature_major:
                out[c, j] = feats[row, c]
            else:
                out[j, c] = feats[row, c]
        y[j] = target[start + j] - other_bias[row]


@njit(fastmath={"reassoc", "contract"}, nogil=True, cache=True)
def _gram_by_dots(xt, y, m, a, rhs, first_chunk):
    """Lower triangle of ``XᵀX`` into ``a`` (column-major) and ``Xᵀy`` into ``rhs`` over the
    first ``m`` columns of ``xt`` (k1, chunk): set on the first chunk, added after. Only
    reassociation and contraction are allowed (not the no-NaN/no-inf assumptions), so the
    finiteness checks of the caller still see a NaN."""
    k1 = xt.shape[0]
    for c in range(k1):
        for r in range(c, k1):
            s = 0.0
            for j in range(m):
                s += xt[c, j] * xt[r, j]
            a[c * k1 + r] = s if first_chunk else a[c * k1 + r] + s
        s = 0.0
        for j in range(m):
            s += xt[c, j] * y[j]
        rhs[c] = s if first_chunk else rhs[c] + s


# One explicit signature, compiled (or loaded from the on-disk cache) when this module is
# imported, so the import is the whole one-off cost and the first fit runs at full speed.
# Plain loops rather than array expressions inside: each of those adds compile time (a fresh
# install compiles once, ~2-3 s; later processes load the cache).
_SIGNATURE = ("void(i8[:], i8[:], i8[:], i4[:], f8[:, ::1], f8[:], f8[:], f8[:], f8[:], i8, f8[:, ::1], i4[:], "
              "u1[:], f8[:], i4[:])")


@njit(_SIGNATURE, nogil=True, cache=True)
def _solve_keys(keys, starts, counts, other_rows, feats, other_bias, target, reg_factor, reg_bias, width, solution,
                info, chars, doubles, ints):
    k1 = feats.shape[1]
    rank = k1 - 1
    chunk = max(min(width, max(_CHUNK_RATINGS, k1)), 1)
    dots = k1 <= _DOT_GRAM_MAX_K1
    buffer = np.empty(chunk * k1)
    x = buffer.reshape((chunk, k1))  # the key's features, row-major (n, k1) = Fortran (k1, n)
    xt = buffer.reshape((k1, chunk))  # the same memory, feature-major, for _gram_by_dots
    y = np.empty(chunk)
    a = np.empty(k1 * k1)  # the system: (k1, k1) primal or (n, n) dual, column-major
    rhs = np.empty(k1)
    # Fortran scalars, passed by pointer: characters, doubles, integers.
    lower, no_trans, trans = chars[0:], chars[1:], chars[2:]
    one, zero = doubles[0:], doubles[1:]
    inc, ld_x, rows, order, status = ints[0:], ints[1:], ints[2:], ints[3:], ints[4:]
    for b in range(keys.shape[0]):
        key = keys[b]
        n = counts[key]
        first = starts[key]
        if n < k1:
            _gather(other_rows, feats, other_bias, target, first, n, x, y, False)
            scale_f, scale_b = 1.0 / np.sqrt(reg_factor[key]), 1.0 / np.sqrt(reg_bias[key])
            for j in range(n):
                for c in range(rank):
                    x[j, c] *= scale_f
                x[j, rank] *= scale_b
            rows[0] = n
            order[0] = n
            _dsyrk(lower.ctypes, trans.ctypes, order.ctypes, ld_x.ctypes, one.ctypes, x.ctypes, ld_x.ctypes,
                   zero.ctypes, a.ctypes, order.ctypes)  # ZZᵀ
            for j in range(n):
                a[j * n + j] += 1.0
            _dposv(lower.ctypes, order.ctypes, inc.ctypes, a.ctypes, order.ctypes, y.ctypes, order.ctypes,
                   status.ctypes)  # y <- α
            _dgemv(no_trans.ctypes, ld_x.ctypes, rows.ctypes, one.ctypes, x.ctypes, ld_x.ctypes, y.ctypes,
                   inc.ctypes, zero.ctypes, rhs.ctypes, inc.ctypes)  # Zᵀα
            for c in range(rank):
                rhs[c] *= scale_f
            rhs[rank] *= scale_b
        else:
            order[0] = k1
            # XᵀX and Xᵀy accumulated over chunks of at most `chunk` ratings, so the gathered
            # features stay in cache even for keys with millions of ratings.
            for lo in range(0, n, chunk):
                m = min(chunk, n - lo)
                if dots:
                    _gather(other_rows, feats, other_bias, target, first + lo, m, xt, y, True)
                    _gram_by_dots(xt, y, m, a, rhs, lo == 0)
                    continue
                _gather(other_rows, feats, other_bias, target, first + lo, m, x, y, False)
                rows[0] = m
                beta = zero if lo == 0 else one
                _dsyrk(lower.ctypes, no_trans.ctypes, order.ctypes, rows.ctypes, one.ctypes, x.ctypes, ld_x.ctypes,
                       beta.ctypes, a.ctypes, order.ctypes)  # XᵀX
                _dgemv(no_trans.ctypes, ld_x.ctypes, rows.ctypes, one.ctypes, x.ctypes, ld_x.ctypes, y.ctypes,
                       inc.ctypes, beta.ctypes, rhs.ctypes, inc.ctypes)  # Xᵀy
            for c in range(rank):
                a[c * k1 + c] += reg_factor[key]
            a[rank * k1 + rank] += reg_bias[key]
            _dposv(lower.ctypes, order.ctypes, inc.ctypes, a.ctypes, order.ctypes, rhs.ctypes, order.ctypes,
                   status.ctypes)
        # OpenBLAS's potrf does not flag NaN pivots (LAPACK's does): check the result instead.
        info[b] = status[0]
        for c in range(k1):
            if not np.isfinite(rhs[c]):
                info[b] = -1
            solution[key, c] = rhs[c]


def solve_keys(keys, starts, counts, other_rows, feats, other_bias, target, reg_factor, reg_bias, solution) -> bool:
    """Solve the ridge systems of ``keys`` and write their rows of ``solution`` (n_keys, k+1).

    The ratings are in CSR order: key k's are positions ``starts[k] .. starts[k] + counts[k]``
    of ``target`` and of ``other_rows`` (each rating's row of ``feats``, the other side's
    ``[factors, 1]``). A rating's regression target is ``target - other_bias[its row]`` (so
    a fit keeps one ``rating - μ`` array and never builds a per-half-step one). Every
    ``reg_factor``/``reg_bias`` of ``keys`` must be > 0 (the systems are then positive
    definite). Returns False when round-off made some system not positive definite (or
    non-finite); its row is then wrong and the caller must solve it otherwise.
    Call it with BLAS limited to one thread (`threadpoolctl`), as `als_core.als` does: OpenBLAS
    threads would compete with the caller's and make round-off depend on the core count.
    """
    if solution.dtype != np.float64 or not solution.flags.c_contiguous or solution.shape[1] != feats.shape[1]:
        raise TypeError("solve_keys writes into a C-contiguous float64 solution of shape (n_keys, k+1)")
    keys = np.asarray(keys, np.int64)
    counts = np.asarray(counts, np.int64)
    info = np.zeros(len(keys), dtype=np.int32)
    if len(keys):
        _solve_keys(keys, np.asarray(starts, np.int64), counts, np.asarray(other_rows, np.int32),
                    np.ascontiguousarray(feats, np.float64), np.asarray(other_bias, np.float64),
                    np.asarray(target, np.float64), np.asarray(reg_factor, np.float64),
                    np.asarray(reg_bias, np.float64), int(counts[keys].max()), solution, info,
                    np.frombuffer(b"LNT", np.uint8).copy(), np.array([1.0, 0.0]),
                    np.array([1, feats.shape[1], 0, 0, 0], np.int32))
    return bool(np.all(info == 0))


__all__ = ["solve_keys"]
