"""Accuracy metrics, train/test splits and the deterministic holdout flag."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from als_core.metrics import mae, rmse
from als_core.splits import holdout_mask, random_split, temporal_split, time_order, with_holdout


# --- metrics -------------------------------------------------------------------------------

def test_rmse_is_the_root_of_the_mean_square():
    # errors 1, 1, 1, 3: mean square 3 -> sqrt(3); not the mean absolute error (1.5),
    # not the root of the sum (sqrt 12), not the mean of per-row roots.
    assert rmse([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, 3.0]) == pytest.approx(math.sqrt(3.0), rel=1e-15)
    assert mae([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, 3.0]) == pytest.approx(1.5, rel=1e-15)
    rng = np.random.default_rng(0)
    y, p = rng.uniform(0.5, 5, 1000), rng.uniform(0.5, 5, 1000)
    by_hand = math.sqrt(sum((a - b) ** 2 for a, b in zip(y.tolist(), p.tolist())) / 1000)
    assert rmse(y, p) == pytest.approx(by_hand, rel=1e-12)
    assert mae(y, p) == pytest.approx(sum(abs(a - b) for a, b in zip(y.tolist(), p.tolist())) / 1000, rel=1e-12)
    assert rmse(y, y) == 0.0 and mae(y, y) == 0.0
    assert rmse(y, p) >= mae(y, p)


def test_metrics_refuse_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        rmse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no ratings"):
        mae([], [])


# --- random split --------------------------------------------------------------------------

def numbered(table: pa.Table) -> pa.Table:
    return table.append_column("row", pa.array(np.arange(table.num_rows)))


def test_random_split_is_deterministic_disjoint_and_complete(shipped):
    t = numbered(shipped)
    train, test = random_split(t, 0.8, seed=42)
    assert train.num_rows == 80_669 and test.num_rows == 20_167  # round(0.8 * 100,836)
    rows = np.concatenate([train["row"].to_numpy(), test["row"].to_numpy()])
    assert np.array_equal(np.sort(rows), np.arange(t.num_rows))  # every row exactly once
    again_train, again_test = random_split(t, 0.8, seed=42)
    assert again_train.equals(train) and again_test.equals(test)
    other_train, _ = random_split(t, 0.8, seed=43)
    assert not np.array_equal(other_train["row"].to_numpy(), train["row"].to_numpy())
    # The documented protocol: permute row numbers (file order) with default_rng(seed).
    perm = np.random.default_rng(42).permutation(t.num_rows)
    assert np.array_equal(train["row"].to_numpy(), perm[:80_669])
    assert np.array_equal(test["row"].to_numpy(), perm[80_669:])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_splits_refuse_degenerate_fractions(fraction):
    t = pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, 2.0], "rated_at": [1, 2]})
    with pytest.raises(ValueError):
        random_split(t, fraction)
    with pytest.raises(ValueError):
        temporal_split(t, fraction)


# --- temporal split ------------------------------------------------------------------------

def test_temporal_split_puts_the_oldest_ratings_in_train(shipped):
    train, test = temporal_split(shipped, 0.8)
    assert train.num_rows + test.num_rows == shipped.num_rows
    assert train.num_rows == round(0.8 * shipped.num_rows)
    ts_train, ts_test = train["rated_at"].to_numpy(), test["rated_at"].to_numpy()
    assert ts_train.max() <= ts_test.min()
    assert np.all(np.diff(ts_train) >= 0) and np.all(np.diff(ts_test) >= 0)


def test_temporal_split_ties_keep_file_order_and_missing_times_go_last():
    t = numbered(pa.table({
        "user_id": [1, 2, 3, 4, 5, 6], "item_id": [1, 1, 1, 1, 1, 1],
        "rating": [1.0, 2.0, 3.0, 4.0, 5.0, 1.5],
        "rated_at": pa.array([30, None, 10, 30, 20, 10], pa.int64()),
    }))
    assert time_order(t).tolist() == [2, 5, 4, 0, 3, 1]
    train, test = temporal_split(t, 0.5)
    assert train["row"].to_pylist() == [2, 5, 4]
    assert test["row"].to_pylist() == [0, 3, 1]  # the rating without a time is last


# --- holdout flag --------------------------------------------------------------------------

def test_holdout_mask_depends_on_the_pair_not_the_row_order(shipped):
    users, items = shipped["user_id"].to_numpy(), shipped["item_id"].to_numpy()
    flags = holdout_mask(users, items, 0.2)
    perm = np.random.default_rng(7).permutation(len(users))
    shuffled = holdout_mask(users[perm], items[perm], 0.2)
    assert np.array_equal(shuffled, flags[perm])
    # Same pair, same flag, in any batch: score a pair alone and inside the full set.
    k = int(np.flatnonzero(flags)[0])
    assert holdout_mask(users[k:k + 1], items[k:k + 1], 0.2)[0]
    # Roughly the asked fraction (100,836 pairs: 1 sd = 0.0013).
    assert abs(flags.mean() - 0.2) < 0.01
    assert abs(holdout_mask(users, items, 0.05).mean() - 0.05) < 0.005
    # Flags nest: a pair held out at 5 % is held out at 20 % too.
    assert np.all(flags[holdout_mask(users, items, 0.05)])
    assert not holdout_mask(users, items, 0.0).any()


def test_holdout_mask_salt_and_direction_matter(shipped):
    users, items = shipped["user_id"].to_numpy(), shipped["item_id"].to_numpy()
    base = holdout_mask(users, items, 0.2)
    assert not np.array_equal(base, holdout_mask(users, items, 0.2, salt=1))
    assert not np.array_equal(base, holdout_mask(items, users, 0.2))  # (u, i) is not (i, u)
    with pytest.raises(ValueError):
        holdout_mask(users, items, 1.0)


def test_with_holdout_adds_the_flag_column(shipped):
    t = with_holdout(shipped.slice(0, 1000), 0.3, salt=5)
    assert t.column_names[-1] == "holdout" and t.schema.field("holdout").type == pa.bool_()
    expected = holdout_mask(t["user_id"].to_numpy(), t["item_id"].to_numpy(), 0.3, salt=5)
    assert np.array_equal(t["holdout"].to_numpy(zero_copy_only=False), expected)
