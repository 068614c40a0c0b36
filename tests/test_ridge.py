"""The compiled per-key ridge solves (`als_core.ridge`) and batch ALS's numpy fallback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from als_core.als import _group, _solve_block, _solve_block_compiled
from als_core.csr import csr_order
from als_core.ridge import _CHUNK_RATINGS, _DOT_GRAM_MAX_K1, solve_keys


def closed_form(features, targets, reg_factor, reg_bias):
    x = np.column_stack([features, np.ones(len(features))])
    penalty = np.diag([reg_factor] * features.shape[1] + [reg_bias])
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets)


def problem(seed: int, rank: int, counts: list[int], n_other: int = 300):
    """Keys 0..len(counts)-1 with the given rating counts, in shuffled rating order, grouped
    like fit_als does; the per-rating inputs also permuted into the grouping's CSR order."""
    rng = np.random.default_rng(seed)
    key_idx = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    other_idx = rng.integers(0, n_other, len(key_idx))
    other = rng.normal(0, 0.4, (n_other, rank))
    target = rng.normal(0, 1, len(key_idx))
    feats = np.vstack([np.column_stack([other, np.ones(n_other)]), np.zeros(rank + 1)])  # + the pad row
    grouping = _group(key_idx, len(counts), rank)
    return key_idx, other_idx, other, target, feats, grouping, other_idx[grouping.order], target[grouping.order]


def expected_rows(key_idx, other_idx, other, target, reg_f, reg_b):
    return np.array([closed_form(other[other_idx[key_idx == k]], target[key_idx == k], reg_f[k], reg_b[k])
                     for k in range(len(reg_f))])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), rank=st.integers(1, 60),
       counts=st.lists(st.integers(1, 150), min_size=1, max_size=12))
def test_every_key_gets_its_normal_equation_solution(seed, rank, counts):
    # Light keys take the dual form, heavy ones the primal form.
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(seed, rank, counts)
    reg_f = np.random.default_rng(seed).uniform(0.1, 5, len(counts))
    reg_b = np.random.default_rng(seed + 1).uniform(0.1, 5, len(counts))
    other_bias = np.random.default_rng(seed + 2).normal(0, 1, len(other))
    solution = np.zeros((len(counts), rank + 1))
    for keys, _ in grouping.blocks:
        assert solve_keys(keys, grouping.starts, grouping.counts, other_sorted, feats, other_bias, target_sorted,
                          reg_f, reg_b, solution)
    # Each rating's regression target is its target minus the bias of the row it rated.
    np.testing.assert_allclose(solution, expected_rows(key_idx, other_idx, other, target - other_bias[other_idx],
                                                       reg_f, reg_b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rank", [6, 30])  # the Gram by compiled dot products, and by BLAS syrk
def test_keys_with_more_ratings_than_a_chunk_accumulate_every_chunk(rank):
    # A heavy key's Gram matrix is summed over chunks of _CHUNK_RATINGS gathered ratings;
    # 5,000 ratings span three chunks (the last one partial), beside a dual and a primal key.
    assert _CHUNK_RATINGS < 5000 < 3 * _CHUNK_RATINGS
    assert (rank + 1 <= _DOT_GRAM_MAX_K1) == (rank == 6)
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(
        5, rank, [5000, 3, 40, 2 * _CHUNK_RATINGS])
    reg_f, reg_b = np.array([0.5, 1.0, 2.0, 3.0]), np.array([0.2, 0.4, 0.6, 0.8])
    other_bias = np.random.default_rng(9).normal(0, 1, len(other))
    solution = np.zeros((4, rank + 1))
    for keys, _ in grouping.blocks:
        assert solve_keys(keys, grouping.starts, grouping.counts, other_sorted, feats, other_bias, target_sorted,
                          reg_f, reg_b, solution)
    np.testing.assert_allclose(solution, expected_rows(key_idx, other_idx, other, target - other_bias[other_idx],
                                                       reg_f, reg_b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rank", [4, 30])
def test_a_non_finite_feature_is_reported(rank):
    # The dot-product Gram is compiled with reassociation only: a NaN must still come out as one.
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(6, rank, [40])
    feats[other_sorted[3], 0] = np.nan
    solution = np.zeros((1, rank + 1))
    assert not solve_keys(np.array([0]), grouping.starts, grouping.counts, other_sorted, feats, np.zeros(300),
                          target_sorted, np.ones(1), np.ones(1), solution)


def test_a_system_that_is_not_positive_definite_is_reported():
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(1, 4, [30, 2])
    solution = np.zeros((2, 5))
    regs = np.array([-1e6, -1e6])  # outside the contract: XᵀX + D is then indefinite
    assert not solve_keys(np.array([0, 1]), grouping.starts, grouping.counts, other_sorted, feats, np.zeros(300),
                          target_sorted, regs, regs, solution)


@pytest.mark.parametrize("counts", [[3, 4, 2], [40, 45, 60]])  # dual and primal blocks
def test_block_cholesky_cannot_factor_is_solved_by_numpy(counts):
    # A negative penalty makes the systems indefinite but still invertible: Cholesky refuses,
    # LU solves them. The compiled path must hand the block to numpy and still be exact.
    rank = 8
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(2, rank, counts)
    reg_f, reg_b = np.full(3, -0.05), np.full(3, -0.02)
    solution = np.zeros((3, rank + 1))
    for keys, width in grouping.blocks:
        _solve_block_compiled(keys, width, grouping, other_sorted, feats, np.zeros(300), target_sorted, reg_f, reg_b,
                              solution)
    np.testing.assert_allclose(solution, expected_rows(key_idx, other_idx, other, target, reg_f, reg_b),
                               rtol=1e-8, atol=1e-10)


def test_compiled_and_numpy_paths_agree():
    rank = 20
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(
        3, rank, [1, 5, 20, 21, 22, 90, 400])
    regs = np.full(7, 2.0)
    other_bias = np.random.default_rng(8).normal(0, 1, 300)
    compiled, numpy_lu = np.zeros((7, rank + 1)), np.zeros((7, rank + 1))
    for keys, width in grouping.blocks:
        _solve_block_compiled(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, regs, regs, compiled)
        _solve_block(keys, width, grouping, other_sorted, feats, other_bias, target_sorted, regs, regs, numpy_lu)
    np.testing.assert_allclose(compiled, numpy_lu, rtol=1e-10, atol=1e-12)


def test_solution_buffer_it_cannot_write_is_refused():
    key_idx, other_idx, other, target, feats, grouping, other_sorted, target_sorted = problem(4, 3, [5])
    with pytest.raises(TypeError, match="C-contiguous float64"):
        solve_keys(np.array([0]), grouping.starts, grouping.counts, other_sorted, feats, np.zeros(300), target_sorted,
                   np.ones(1), np.ones(1), np.zeros((1, 4), dtype=np.float32))


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.integers(0, 70_000), max_size=300))
def test_csr_order_is_the_stable_argsort(keys):
    # Key indices above 2**16 too: numpy's own stable sort changes algorithm there.
    key_idx = np.array(keys, dtype=np.int32)
    counts = np.bincount(key_idx, minlength=1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    np.testing.assert_array_equal(csr_order(key_idx, starts), np.argsort(key_idx, kind="stable"))
