"""Grid search over batch ALS and successive-halving pruning."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from als_core.als import ALSParams, fit_als
from als_core.grid import GridResult, grid_search_als, successive_halving
from als_core.metrics import mae, rmse
from als_core.splits import random_split


def col(table, name):
    return table[name].to_numpy()


@pytest.fixture(scope="module")
def split(shipped):
    train, test = random_split(shipped, 0.8, seed=42)
    return train, test


def test_grid_search_covers_the_grid_best_first_with_real_scores(split):
    train, test = split
    rows = grid_search_als(train, test, ranks=[4, 10], lambdas=[0.5, 15.0], iterations_list=[2, 6], lambda_biases=[5.0])
    assert all(isinstance(r, GridResult) for r in rows)
    grid = {(r.params.rank, r.params.lambda_, r.params.lambda_bias, r.params.iterations) for r in rows}
    assert grid == {(k, lam, 5.0, n) for k in (4, 10) for lam in (0.5, 15.0) for n in (2, 6)}
    scores = [r.rmse for r in rows]
    assert scores == sorted(scores) and len(set(scores)) == 8
    assert all(r.fit_seconds > 0 for r in rows)
    # λ = 0.5 overfits on this data: every λ = 15 point beats every λ = 0.5 point.
    assert {r.params.lambda_ for r in rows[:4]} == {15.0}
    # Scores are the clipped validation RMSE/MAE of exactly that fit.
    best = rows[0]
    model = fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), best.params)
    pred = model.predict(col(test, "user_id"), col(test, "item_id"), clip=(0.5, 5.0))
    assert best.rmse == rmse(col(test, "rating"), pred)
    assert best.mae == mae(col(test, "rating"), pred)
    assert best.rmse < 0.86


def test_grid_search_accepts_numpy_and_arrow_alike(split):
    train, test = split
    train, test = train.slice(0, 20_000), test.slice(0, 5_000)
    arrays = tuple(col(train, n) for n in ("user_id", "item_id", "rating"))
    matrix = np.column_stack([col(test, n) for n in ("user_id", "item_id", "rating")])
    kw = dict(ranks=[3], lambdas=[5.0, 20.0], iterations_list=[3])
    from_arrow = grid_search_als(train, test, **kw)
    from_numpy = grid_search_als(arrays, matrix, **kw)
    batch = pa.Table.from_batches(train.to_batches()).combine_chunks().to_batches()[0]
    columns = {n: col(test, n) for n in ("user_id", "item_id", "rating")}
    from_batch = grid_search_als(batch, columns, **kw)  # a RecordBatch and a dict of columns
    assert batch.num_rows == train.num_rows
    for other in (from_numpy, from_batch):
        assert [(r.params, r.rmse, r.mae) for r in other] == [(r.params, r.rmse, r.mae) for r in from_arrow]


def test_grid_search_uses_base_params_and_clip(split):
    train, test = split
    base = ALSParams(seed=3, lambda_bias=7.0)
    clipped = grid_search_als(train, test, [5], [10.0], [3], base=base)
    raw = grid_search_als(train, test, [5], [10.0], [3], base=base, clip=None)
    assert clipped[0].params.seed == 3 and clipped[0].params.lambda_bias == 7.0
    assert clipped[0].rmse < raw[0].rmse  # clipping to the scale only removes error


def test_grid_search_refuses_bad_input():
    ratings = (np.array([1, 2]), np.array([1, 1]), np.array([4.0, 3.0]))
    with pytest.raises(ValueError, match="empty grid"):
        grid_search_als(ratings, ratings, [], [1.0], [1])
    with pytest.raises(ValueError, match="lengths differ"):
        grid_search_als((np.array([1]), np.array([1, 2]), np.array([1.0])), ratings, [1], [1.0], [1])
    with pytest.raises(TypeError):
        grid_search_als("ratings.csv", ratings, [1], [1.0], [1])


# --- successive halving --------------------------------------------------------------------

def test_halving_keeps_the_better_half():
    scores = {"m1": 0.90, "m2": 0.80, "m3": 1.00, "m4": 0.85, "m5": 0.95, "m6": 0.88}
    kept, pruned = successive_halving(scores)
    assert kept == ["m2", "m4", "m6"]
    assert pruned == ["m1", "m5", "m3"]


def test_halving_rounds_up_and_respects_min_keep():
    scores = {f"m{k}": float(k) for k in range(5)}
    assert successive_halving(scores)[0] == ["m0", "m1", "m2"]  # ceil(5 / 2)
    assert successive_halving(scores, keep_fraction=0.2, min_keep=1)[0] == ["m0"]
    assert successive_halving(scores, keep_fraction=0.2, min_keep=2)[0] == ["m0", "m1"]
    assert successive_halving(scores, keep_fraction=0.2, min_keep=9) == (["m0", "m1", "m2", "m3", "m4"], [])
    assert successive_halving({"solo": 1.0}) == (["solo"], [])
    assert successive_halving({}) == ([], [])


def test_halving_breaks_ties_by_model_id_whatever_the_dict_order():
    items = [("b", 0.9), ("d", 0.9), ("a", 0.9), ("c", 0.9), ("e", 0.5)]
    expected = (["e", "a"], ["b", "c", "d"])
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert successive_halving(dict(items), keep_fraction=0.4) == expected


def test_halving_prunes_non_finite_scores_first():
    scores = {"ok1": 0.9, "nan": math.nan, "inf": math.inf, "ok2": 1.2, "neg_inf": -math.inf}
    kept, pruned = successive_halving(scores, keep_fraction=0.5, min_keep=2)
    assert kept == ["ok1", "ok2"]  # ceil(2.5) = 3 slots, but only 2 finite scores
    assert pruned == ["inf", "nan", "neg_inf"]
    kept, pruned = successive_halving(scores, keep_fraction=0.2, min_keep=1)
    assert kept == ["ok1"] and pruned == ["ok2", "inf", "nan", "neg_inf"]
    assert successive_halving({"a": math.nan, "b": math.nan}) == ([], ["a", "b"])


def test_halving_partitions_its_input():
    rng = np.random.default_rng(0)
    scores = {f"model-{k:02d}": float(s) for k, s in enumerate(rng.normal(0.9, 0.05, 17))}
    kept, pruned = successive_halving(scores, keep_fraction=0.3, min_keep=2)
    assert sorted(kept + pruned) == sorted(scores) and not set(kept) & set(pruned)
    assert len(kept) == 6  # ceil(0.3 * 17)
    assert max(scores[m] for m in kept) <= min(scores[m] for m in pruned)


@pytest.mark.parametrize("kwargs", [dict(keep_fraction=0.0), dict(keep_fraction=1.5), dict(min_keep=-1)])
def test_halving_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        successive_halving({"a": 1.0}, **kwargs)
