"""Batch ALS: closed-form half-steps, monotone loss, ALS-WR penalty, cold start, determinism,
and accuracy on the shipped MovieLens latest-small set (LensKit-style: a fixed protocol and a
stated tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

from als_core.als import ALSParams, _dense_index, _group, als_loss, fit_als, solve_side
from als_core.init import SIDE_ITEM, init_vectors
from als_core.metrics import mae, rmse
from als_core.splits import random_split


def closed_form(features: np.ndarray, targets: np.ndarray, reg_factor: float, reg_bias: float) -> np.ndarray:
    """[x, b] minimising Σ (t - f·x - b)² + reg_factor |x|² + reg_bias b², straight from the
    normal equations (one key, no batching, no dual form)."""
    x = np.column_stack([features, np.ones(len(features))])
    penalty = np.diag([reg_factor] * features.shape[1] + [reg_bias])
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets)


def col(table, name):
    return table[name].to_numpy()


# --- the half-step ------------------------------------------------------------------------

def test_half_step_matches_normal_equations_on_hand_built_matrix():
    # 3 users x 4 items, rank 2. User 0 rates 2 items (fewer than rank + 1 = 3: the solver's
    # dual form), user 1 rates all 4 (primal form), user 2 rates 1.
    items = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0], [0.5, 0.5]])
    u_idx = np.array([0, 0, 1, 1, 1, 1, 2])
    i_idx = np.array([0, 2, 0, 1, 2, 3, 3])
    target = np.array([1.0, -0.5, 0.25, 2.0, -1.0, 0.75, 1.5])
    reg_f, reg_b = np.array([0.3, 0.7, 1.1]), np.array([0.2, 0.4, 0.9])
    factors, biases = solve_side(_group(u_idx, 3, rank=2), items, i_idx, target, 3, reg_f, reg_b)

    # User 1 written out: features [P_i, 1] of items 0..3 and its 4 targets.
    expected_u1 = np.linalg.solve(
        np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, -1.0, 1.0], [0.5, 0.5, 1.0]]).T
        @ np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, -1.0, 1.0], [0.5, 0.5, 1.0]])
        + np.diag([0.7, 0.7, 0.4]),
        np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, -1.0, 1.0], [0.5, 0.5, 1.0]]).T @ np.array([0.25, 2.0, -1.0, 0.75]),
    )
    np.testing.assert_allclose(np.append(factors[1], biases[1]), expected_u1, rtol=1e-12, atol=1e-14)
    for u in range(3):
        rows = u_idx == u
        expected = closed_form(items[i_idx[rows]], target[rows], reg_f[u], reg_b[u])
        np.testing.assert_allclose(np.append(factors[u], biases[u]), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lambda_", [0.0, 2.5])
def test_half_step_matches_normal_equations_at_rank_50(lambda_):
    # Keys with 7 ratings (dual form when λ > 0), 60 (primal) and 400 (primal; the Gram matrix
    # is summed over several chunks of the ratings axis).
    rng = np.random.default_rng(3)
    counts = [7, 60, 400]
    u_idx = np.repeat(np.arange(3), counts)
    i_idx = rng.integers(0, 500, len(u_idx))
    items = rng.normal(0, 0.3, (500, 50))
    target = rng.normal(0, 1, len(u_idx))
    reg_f, reg_b = np.full(3, lambda_), np.array([1.0, 2.0, 3.0])
    if lambda_ == 0.0:
        reg_f[0] = 1.0  # 7 ratings cannot determine 50 factors without a penalty
    factors, biases = solve_side(_group(u_idx, 3, rank=50), items, i_idx, target, 3, reg_f, reg_b)
    for u in range(3):
        rows = u_idx == u
        expected = closed_form(items[i_idx[rows]], target[rows], reg_f[u], reg_b[u])
        np.testing.assert_allclose(np.append(factors[u], biases[u]), expected, rtol=1e-9, atol=1e-12)


def test_first_user_step_of_fit_is_the_closed_form_from_the_initial_items():
    users = np.array([1, 1, 1, 2, 2, 3])
    items = np.array([10, 20, 30, 10, 30, 20])
    r = np.array([5.0, 3.0, 4.0, 2.0, 1.0, 4.0])
    params = ALSParams(rank=2, iterations=1, lambda_=0.5, lambda_bias=0.25, seed=7)
    model = fit_als(users, items, r, params)
    p0 = init_vectors(7, SIDE_ITEM, np.array([10, 20, 30]), 2, params.init_scale)  # item biases start at 0
    rows = users == 1
    expected = closed_form(p0[[0, 1, 2]], r[rows] - r.mean(), 0.5, 0.25)
    np.testing.assert_allclose(np.append(model.user_factors[0], model.user_bias[0]), expected, rtol=1e-12)


def test_first_half_step_on_real_data_matches_per_user_solves(shipped):
    # Rank 50 on the shipped ratings: light users go through the dual form, heavy ones through
    # chunked Gram matrices; every one must equal its own normal-equation solve.
    u, i, r = col(shipped, "user_id"), col(shipped, "item_id"), col(shipped, "rating")
    params = ALSParams(rank=50, iterations=1, lambda_=3.0, lambda_bias=2.0)
    model = fit_als(u, i, r, params)
    p0 = init_vectors(params.seed, SIDE_ITEM, model.item_ids, 50, params.init_scale)
    counts = model.user_counts
    picks = [int(np.argmin(counts)), int(np.argmax(counts)), *np.flatnonzero((counts > 30) & (counts < 45))[:2],
             *np.flatnonzero((counts > 200) & (counts < 400))[:2]]
    assert counts[picks].min() < 51 < counts[picks].max()
    for k in picks:
        rows = u == model.user_ids[k]
        expected = closed_form(p0[np.searchsorted(model.item_ids, i[rows])], r[rows] - r.mean(), 3.0, 2.0)
        np.testing.assert_allclose(np.append(model.user_factors[k], model.user_bias[k]), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("offset", [0, -25, 10**12])
def test_ids_are_indexed_like_np_unique(offset):
    # Small non-negative ids take a presence-table path, huge or negative ones a sort.
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, 800) * 3 + offset
    unique, inverse = _dense_index(ids)
    expected_unique, expected_inverse = np.unique(ids, return_inverse=True)
    np.testing.assert_array_equal(unique, expected_unique)
    np.testing.assert_array_equal(inverse, expected_inverse)
    users, items = rng.integers(0, 30, 800) + offset, ids
    r = rng.integers(1, 6, 800).astype(float)
    m = fit_als(users, items, r, rank=3, iterations=2)
    np.testing.assert_array_equal(m.user_ids, np.unique(users))
    np.testing.assert_array_equal(m.item_counts, np.bincount(expected_inverse))
    assert rmse(r, m.predict(users, items)) < np.std(r)  # learnt something beyond μ


def test_loss_never_increases(shipped):
    train, _ = random_split(shipped, 0.8, seed=42)
    losses = []
    fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), rank=10, iterations=8,
            callback=lambda it, loss: losses.append((it, loss)))
    assert [it for it, _ in losses] == list(range(8))
    values = np.array([loss for _, loss in losses])
    assert np.all(np.diff(values) <= 1e-9 * values[:-1]), values
    assert values[-1] < 0.95 * values[0]  # and it does go down (59.3k -> 54.0k)


def test_callback_loss_is_als_loss_of_the_returned_model():
    users, items = np.array([1, 1, 2, 2, 3, 3]), np.array([1, 2, 1, 3, 2, 3])
    r = np.array([5.0, 3.0, 4.0, 1.0, 2.0, 4.0])
    params = ALSParams(rank=2, iterations=3, lambda_=0.3, lambda_bias=0.2, weighted_lambda=True)
    seen = []
    model = fit_als(users, items, r, params, callback=lambda it, loss: seen.append(loss))
    u_idx, i_idx = np.searchsorted(model.user_ids, users), np.searchsorted(model.item_ids, items)
    assert seen[-1] == als_loss(model, u_idx, i_idx, r, params, model.user_counts, model.item_counts)


def test_tol_stops_early():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 2000), rng.integers(0, 80, 2000)
    r = rng.integers(1, 6, 2000).astype(float)
    calls = []
    fit_als(users, items, r, rank=3, iterations=50, tol=1e-3, callback=lambda it, loss: calls.append(it))
    assert 2 <= len(calls) < 50


# --- weighted λ (ALS-WR) -------------------------------------------------------------------

def test_weighted_lambda_changes_result_and_matches_closed_form():
    users = np.array([1, 1, 1, 1, 2, 3, 3])
    items = np.array([10, 20, 30, 40, 10, 20, 40])
    r = np.array([5.0, 3.0, 4.0, 2.0, 1.0, 4.0, 5.0])
    base = ALSParams(rank=3, iterations=1, lambda_=0.4, lambda_bias=0.1, seed=1)
    plain = fit_als(users, items, r, base)
    weighted = fit_als(users, items, r, base, weighted_lambda=True)
    assert not np.allclose(plain.user_factors, weighted.user_factors)
    p0 = init_vectors(1, SIDE_ITEM, np.array([10, 20, 30, 40]), 3, base.init_scale)
    for u, n in ((0, 4), (1, 1), (2, 2)):  # ALS-WR: the factor penalty is λ x (ratings of the key)
        rows = users == plain.user_ids[u]
        feats = p0[np.searchsorted(plain.item_ids, items[rows])]
        expect_w = closed_form(feats, r[rows] - r.mean(), 0.4 * n, 0.1)
        expect_p = closed_form(feats, r[rows] - r.mean(), 0.4, 0.1)
        np.testing.assert_allclose(np.append(weighted.user_factors[u], weighted.user_bias[u]), expect_w, rtol=1e-12)
        np.testing.assert_allclose(np.append(plain.user_factors[u], plain.user_bias[u]), expect_p, rtol=1e-12)
    # The item half-step uses the item counts: item 10 (2 ratings) against the fitted users.
    rows = items == 10
    feats = weighted.user_factors[np.searchsorted(weighted.user_ids, users[rows])]
    t = r[rows] - r.mean() - weighted.user_bias[np.searchsorted(weighted.user_ids, users[rows])]
    np.testing.assert_allclose(np.append(weighted.item_factors[0], weighted.item_bias[0]),
                               closed_form(feats, t, 0.4 * 2, 0.1), rtol=1e-12)


# --- cold start ----------------------------------------------------------------------------

def test_cold_start_rule_for_unknown_users_and_items():
    users, items = np.array([1, 1, 2, 2]), np.array([10, 20, 10, 30])
    r = np.array([5.0, 3.0, 4.0, 1.0])
    m = fit_als(users, items, r, rank=2, iterations=5)
    b_u1 = m.user_bias[0]
    b_i10 = m.item_bias[0]
    assert b_u1 != 0 and b_i10 != 0
    pred = m.predict([1, 99, 99, 1], [99, 10, 98, 10])
    np.testing.assert_allclose(pred[:3], [m.mu + b_u1, m.mu + b_i10, m.mu], rtol=1e-15)
    assert pred[3] == pytest.approx(m.mu + b_u1 + b_i10 + m.user_factors[0] @ m.item_factors[0], rel=1e-12)
    assert m.mu == r.mean()


# --- determinism ---------------------------------------------------------------------------

def test_same_inputs_and_seed_give_identical_models(shipped):
    u, i, r = col(shipped, "user_id")[:30_000], col(shipped, "item_id")[:30_000], col(shipped, "rating")[:30_000]
    a = fit_als(u, i, r, rank=20, iterations=3, seed=5, threads=2)
    b = fit_als(u, i, r, rank=20, iterations=3, seed=5, threads=2)
    c = fit_als(u, i, r, rank=20, iterations=3, seed=5, threads=1)
    for m in (b, c):  # bit-identical, whatever the thread count
        assert np.array_equal(a.user_factors, m.user_factors) and np.array_equal(a.item_factors, m.item_factors)
        assert np.array_equal(a.user_bias, m.user_bias) and np.array_equal(a.item_bias, m.item_bias)
    d = fit_als(u, i, r, rank=20, iterations=3, seed=6)
    assert not np.allclose(a.item_factors, d.item_factors)


def test_rating_order_does_not_change_the_model():
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 40, 1500), rng.integers(0, 60, 1500)
    r = rng.integers(1, 6, 1500).astype(float)
    perm = rng.permutation(1500)
    a = fit_als(u, i, r, rank=4, iterations=4)
    b = fit_als(u[perm], i[perm], r[perm], rank=4, iterations=4)
    np.testing.assert_allclose(a.user_factors, b.user_factors, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.item_bias, b.item_bias, rtol=1e-9, atol=1e-12)


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="at least one rating"):
        fit_als([], [], [])


# --- accuracy ------------------------------------------------------------------------------

def test_default_params_reach_the_stated_accuracy(shipped):
    """random_split(0.8, seed 42), default ALSParams (rank 10, λ 15, λ_b 5, 10 iterations),
    predictions clipped to [0.5, 5]: measured RMSE 0.849, MAE 0.653; tolerance RMSE <= 0.860."""
    train, test = random_split(shipped, 0.8, seed=42)
    model = fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"))
    pred = model.predict(col(test, "user_id"), col(test, "item_id"), clip=(0.5, 5.0))
    assert rmse(col(test, "rating"), pred) <= 0.860
    assert mae(col(test, "rating"), pred) <= 0.665
    # The old default (λ = λ_b = 0.1) overfits badly: the defaults matter.
    old = fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), lambda_=0.1, lambda_bias=0.1)
    assert rmse(col(test, "rating"), old.predict(col(test, "user_id"), col(test, "item_id"), clip=(0.5, 5.0))) > 0.95
