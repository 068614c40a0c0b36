"""Reference streaming SGD: the mini-batch step by hand, aggregation and bias rules, unseen
ids, float32 storage, sequential SGD, warm starts, and one-pass accuracy on the shipped set."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from als_core.als import fit_als
from als_core.init import SIDE_ITEM, SIDE_USER, init_vectors
from als_core.metrics import rmse
from als_core.model import FactorModel
from als_core.sgd import SGDParams, empty_model, minibatch_step, replay, sequential_sgd, warm_start
from als_core.splits import random_split


def col(table, name):
    return table[name].to_numpy()


def start_model() -> FactorModel:
    """Two users, two items, rank 2, μ = 3 over 2 ratings seen."""
    return FactorModel(
        mu=3.0, n_ratings=2,
        user_ids=np.array([1, 2]), user_bias=np.array([0.5, -0.5]),
        user_factors=np.array([[1.0, 0.0], [0.0, 1.0]]), user_counts=np.array([3, 1]),
        item_ids=np.array([10, 20]), item_bias=np.array([0.0, 0.25]),
        item_factors=np.array([[0.5, 0.5], [1.0, -1.0]]), item_counts=np.array([2, 5]),
    )


# Batch: user 1 rates items 10 and 20, user 2 rates item 10.
BATCH = (np.array([1, 1, 2]), np.array([10, 20, 10]), np.array([5.0, 4.0, 3.0]))
SUM = SGDParams(rank=2, gamma=0.1, lambda_=0.1, lambda_bias=0.2, aggregation="sum", bias_update="sgd")

# The step written out. μ = (3·2 + 5 + 4 + 3) / 5 = 3.6. Errors, all from pre-batch values:
#   (1,10): 5 - (3.6 + 0.5 + 0    + [1,0]·[.5,.5])  =  0.4
#   (1,20): 4 - (3.6 + 0.5 + 0.25 + [1,0]·[1,-1])   = -1.35
#   (2,10): 3 - (3.6 - 0.5 + 0    + [0,1]·[.5,.5])  = -0.6
# ΔU1 = .1((.4[.5,.5] - .1[1,0]) + (-1.35[1,-1] - .1[1,0])) = [-0.135, 0.155]
# ΔU2 = .1(-.6[.5,.5] - .1[0,1])                              = [-0.03, -0.04]
# ΔP10 = .1((.4[1,0] - .1[.5,.5]) + (-.6[0,1] - .1[.5,.5]))   = [0.03, -0.07]
# ΔP20 = .1(-1.35[1,0] - .1[1,-1])                            = [-0.145, 0.01]
# Δb_u1 = .1((.4 - 1.35) - .2·2·.5) = -0.115    Δb_u2 = .1(-.6 - .2·1·(-.5)) = -0.05
# Δb_i10 = .1((.4 - .6) - .2·2·0)   = -0.02     Δb_i20 = .1(-1.35 - .2·1·.25) = -0.14
EXPECTED_SUM = dict(
    mu=3.6,
    user_factors=[[0.865, 0.155], [-0.03, 0.96]], user_bias=[0.385, -0.55],
    item_factors=[[0.53, 0.43], [0.855, -0.99]], item_bias=[-0.02, 0.11],
)


def test_minibatch_step_equals_hand_computation():
    m = minibatch_step(start_model(), *BATCH, SUM)
    assert m.mu == pytest.approx(EXPECTED_SUM["mu"], abs=1e-15)
    for name in ("user_factors", "user_bias", "item_factors", "item_bias"):
        np.testing.assert_allclose(getattr(m, name), EXPECTED_SUM[name], rtol=0, atol=1e-14, err_msg=name)
    assert m.n_ratings == 5
    assert m.user_counts.tolist() == [5, 2] and m.item_counts.tolist() == [4, 6]
    # The input model is not modified.
    np.testing.assert_array_equal(start_model().user_factors, [[1.0, 0.0], [0.0, 1.0]])


def test_gradients_use_pre_batch_factors():
    # User 1 has two ratings in the batch. Both its terms and item 20's update use U1 as it
    # was before the batch: ΔP20 = .1(-1.35·U1 - .1·P20) with U1 = [1, 0], not the new [0.865, 0.155].
    m = minibatch_step(start_model(), *BATCH, SUM)
    np.testing.assert_allclose(m.item_factors[1], [1.0 - 0.145, -1.0 + 0.01], atol=1e-14)
    # Feeding the same ratings one at a time gives something else: the second sees the first.
    seq = start_model()
    for k in range(3):
        seq = minibatch_step(seq, BATCH[0][k:k + 1], BATCH[1][k:k + 1], BATCH[2][k:k + 1], SUM)
    assert not np.allclose(seq.user_factors[0], m.user_factors[0], atol=1e-6)


def test_mean_aggregation_is_sum_divided_by_count():
    start = start_model()
    s = minibatch_step(start, *BATCH, SUM)
    m = minibatch_step(start, *BATCH, replace(SUM, aggregation="mean"))
    # User 1 and item 10 have 2 ratings in the batch: mean step = sum step / 2.
    np.testing.assert_allclose(m.user_factors[0] - start.user_factors[0], (s.user_factors[0] - start.user_factors[0]) / 2, atol=1e-15)
    np.testing.assert_allclose(m.item_factors[0] - start.item_factors[0], (s.item_factors[0] - start.item_factors[0]) / 2, atol=1e-15)
    assert m.user_bias[0] - 0.5 == pytest.approx(-0.115 / 2, abs=1e-15)
    assert m.item_bias[0] - 0.0 == pytest.approx(-0.02 / 2, abs=1e-15)
    np.testing.assert_allclose(m.user_factors[0], [1 - 0.0675, 0.0775], atol=1e-14)
    # Keys with one rating move the same under both rules.
    np.testing.assert_array_equal(m.user_factors[1], s.user_factors[1])
    np.testing.assert_array_equal(m.item_factors[1], s.item_factors[1])
    assert m.user_bias[1] == s.user_bias[1] and m.item_bias[1] == s.item_bias[1]


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_running_mean_bias_rule_is_its_closed_form(aggregation):
    p = replace(SUM, bias_update="running_mean", aggregation=aggregation)
    m = minibatch_step(start_model(), *BATCH, p)
    # b <- b + Σ_batch e / (n_before + n_batch + λ_b), whatever the vector aggregation.
    np.testing.assert_allclose(m.user_bias, [0.5 + (0.4 - 1.35) / (3 + 2 + 0.2), -0.5 + -0.6 / (1 + 1 + 0.2)], atol=1e-15)
    np.testing.assert_allclose(m.item_bias, [0.0 + (0.4 - 0.6) / (2 + 2 + 0.2), 0.25 + -1.35 / (5 + 1 + 0.2)], atol=1e-15)


def test_unseen_ids_start_from_init_vectors():
    p = SGDParams(rank=4, gamma=0.0, seed=9, init_scale=0.2)  # γ = 0: nothing moves but μ
    m = minibatch_step(empty_model(4), [7, 3, 7], [100, 100, 5], [4.0, 2.0, 5.0], p)
    assert m.user_ids.tolist() == [3, 7] and m.item_ids.tolist() == [5, 100]
    np.testing.assert_array_equal(m.user_factors, init_vectors(9, SIDE_USER, np.array([3, 7]), 4, 0.2))
    np.testing.assert_array_equal(m.item_factors, init_vectors(9, SIDE_ITEM, np.array([5, 100]), 4, 0.2))
    assert m.user_bias.tolist() == [0.0, 0.0] and m.item_bias.tolist() == [0.0, 0.0]
    assert m.user_counts.tolist() == [1, 2] and m.item_counts.tolist() == [1, 2]
    assert m.mu == pytest.approx(11 / 3)
    # A known id keeps its state; a new one is inserted in sorted position.
    m2 = minibatch_step(m, [5], [5], [3.0], p)
    assert m2.user_ids.tolist() == [3, 5, 7]
    np.testing.assert_array_equal(m2.user_factors[[0, 2]], m.user_factors)
    np.testing.assert_array_equal(m2.user_factors[1], init_vectors(9, SIDE_USER, np.array([5]), 4, 0.2)[0])


def test_store_float32_rounds_vectors():
    p = SGDParams(rank=3, gamma=0.05)
    users, items, r = [1, 2, 1], [1, 1, 2], [4.0, 3.0, 1.0]
    exact = minibatch_step(empty_model(3), users, items, r, p)
    stored = minibatch_step(empty_model(3), users, items, r, p, store_float32=True)
    for v in (stored.user_factors, stored.item_factors):
        np.testing.assert_array_equal(v, v.astype(np.float32).astype(np.float64))
    assert not np.array_equal(exact.user_factors, exact.user_factors.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(stored.user_factors, exact.user_factors, rtol=1e-6)
    assert not np.array_equal(stored.user_factors, exact.user_factors)


def test_sequential_sgd_differs_from_minibatch_and_matches_its_own_rule():
    users, items, r = [1, 1, 2], [5, 6, 5], [5.0, 1.0, 3.0]
    p = SGDParams(rank=2, gamma=0.1, lambda_=0.02, lambda_bias=0.02)
    seq = sequential_sgd(users, items, r, p)
    mb = minibatch_step(empty_model(2), users, items, r, p)
    assert seq.n_ratings == mb.n_ratings == 3 and seq.mu == pytest.approx(mb.mu)
    assert not np.allclose(seq.user_bias, mb.user_bias)
    assert not np.allclose(seq.item_factors, mb.item_factors)
    # Sequential by hand: each rating updates its user and item before the next is scored.
    u1 = init_vectors(42, SIDE_USER, np.array([1]), 2, 0.1)[0]
    p5, p6 = init_vectors(42, SIDE_ITEM, np.array([5, 6]), 2, 0.1)
    e1 = 5.0 - (5.0 + 0.0 + 0.0 + u1 @ p5)  # μ = 5 after rating 1
    bu1 = 0.1 * (e1 - 0.02 * 0.0)
    u1, p5 = u1 + 0.1 * (e1 * p5 - 0.02 * u1), p5 + 0.1 * (e1 * u1 - 0.02 * p5)
    e2 = 1.0 - (3.0 + bu1 + 0.0 + u1 @ p6)  # μ = 3; sees the updated b_u1 and U1
    bu1 += 0.1 * (e2 - 0.02 * bu1)
    bi6 = 0.1 * e2
    u1, p6 = u1 + 0.1 * (e2 * p6 - 0.02 * u1), p6 + 0.1 * (e2 * u1 - 0.02 * p6)
    assert seq.user_bias[0] == pytest.approx(bu1, rel=1e-12)
    assert seq.item_bias[1] == pytest.approx(bi6, rel=1e-12)
    np.testing.assert_allclose(seq.item_factors[1], p6, rtol=1e-12)
    # The mini-batch step scores rating 2 with the pre-batch state instead (μ = 3 over the batch).
    u1_0 = init_vectors(42, SIDE_USER, np.array([1]), 2, 0.1)[0]
    p6_0 = init_vectors(42, SIDE_ITEM, np.array([6]), 2, 0.1)[0]
    assert mb.item_bias[1] == pytest.approx(0.1 * (1.0 - (3.0 + u1_0 @ p6_0)), rel=1e-12)


def test_warm_start_continues_from_an_als_model(shipped):
    train, test = random_split(shipped, 0.8, seed=42)
    n_head = 60_000
    head, tail = train.slice(0, n_head), train.slice(n_head)
    als = fit_als(col(head, "user_id"), col(head, "item_id"), col(head, "rating"), rank=10)
    warm = warm_start(als)
    assert warm.n_ratings == n_head and warm.mu == als.mu
    np.testing.assert_array_equal(warm.user_counts, als.user_counts)
    np.testing.assert_array_equal(warm.item_factors, als.item_factors)

    p = SGDParams(rank=10, gamma=0.05, lambda_bias=3, aggregation="mean", bias_update="running_mean")
    batch = tail.slice(0, 1000)
    step = minibatch_step(warm, col(batch, "user_id"), col(batch, "item_id"), col(batch, "rating"), p)
    # Keys outside the batch keep their ALS values; counts and μ continue from the ALS fit.
    untouched = ~np.isin(als.user_ids, col(batch, "user_id"))
    np.testing.assert_array_equal(step.user_factors[: len(als.user_ids)][untouched], als.user_factors[untouched])
    assert step.n_ratings == n_head + 1000
    assert step.mu == pytest.approx((als.mu * n_head + col(batch, "rating").sum()) / (n_head + 1000), rel=1e-12)
    u0 = col(batch, "user_id")[0]
    k_new, k_old = np.searchsorted(step.user_ids, u0), np.searchsorted(als.user_ids, u0)
    assert step.user_counts[k_new] == als.user_counts[k_old] + np.sum(col(batch, "user_id") == u0)

    # Streaming the rest from the ALS model beats streaming everything from scratch.
    def score(m):
        return rmse(col(test, "rating"), m.predict(col(test, "user_id"), col(test, "item_id"), clip=(0.5, 5.0)))

    warm_end = replay(col(tail, "user_id"), col(tail, "item_id"), col(tail, "rating"), p, 1000, model=warm)
    cold_end = replay(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), p, 1000)
    assert score(warm_end) < score(cold_end) - 0.005


# --- accuracy ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("params", "bound"),
    [
        # measured 0.881
        (SGDParams(gamma=0.05, aggregation="mean"), 0.90),
        # measured 0.866
        (SGDParams(gamma=0.05, lambda_bias=3, aggregation="mean", bias_update="running_mean"), 0.88),
    ],
)
def test_one_pass_replay_accuracy(shipped, params, bound):
    """random_split(0.8, seed 42); one pass over the training rows in the split's order, in
    1,000-rating batches; test predictions clipped to [0.5, 5]."""
    train, test = random_split(shipped, 0.8, seed=42)
    model = replay(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), params, batch_size=1000)
    assert model.n_ratings == train.num_rows
    pred = model.predict(col(test, "user_id"), col(test, "item_id"), clip=(0.5, 5.0))
    assert rmse(col(test, "rating"), pred) <= bound
