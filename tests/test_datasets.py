"""Tests of als_core.datasets: shipped data, optional ml-100k, synthetic streams, writing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from als_core import datasets
from als_core.datasets import (
    load_shipped,
    ml100k_path,
    shipped_ratings_path,
    synthetic_ratings,
    write_ratings,
)
from als_core.readers import read_ratings
from als_core.schema import RATING_SCHEMA


def test_shipped_ratings_live_in_the_package_with_their_readme():
    path = shipped_ratings_path()
    assert path.is_file() and path.parent.parent.parent == datasets.Path(datasets.__file__).parent
    assert (path.parent / "README.txt").is_file()  # the licence requires it beside the data


def test_load_shipped_gives_the_whole_movielens_sample():
    table = load_shipped()
    assert table.schema.equals(RATING_SCHEMA)
    assert table.num_rows == 100_836
    assert pa.compute.count_distinct(table.column("user_id")).as_py() == 610
    assert pa.compute.count_distinct(table.column("item_id")).as_py() == 9_724


def test_ml100k_path_prefers_root_then_environment(tmp_path, monkeypatch):
    assert ml100k_path(tmp_path) is None
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t2\t3\t4\n")
    assert ml100k_path(tmp_path) == tmp_path / "ml-100k" / "u.data"
    monkeypatch.setenv("STREAMING_ALS_ML100K", str(tmp_path / "ml-100k"))
    assert ml100k_path() == tmp_path / "ml-100k" / "u.data"
    monkeypatch.setenv("STREAMING_ALS_ML100K", str(tmp_path / "ml-100k" / "u.data"))
    assert ml100k_path() == tmp_path / "ml-100k" / "u.data"


def test_ml100k_reads_completely_when_present():
    path = ml100k_path()
    if path is None:
        pytest.skip("MovieLens 100k is not on this machine (it may not be redistributed)")
    result = read_ratings(path, scale=(1, 5))
    assert result.format == "ml100k"
    assert (result.ratings.num_rows, result.rejected.num_rows) == (100_000, 0)
    assert pa.compute.count_distinct(result.ratings.column("user_id")).as_py() == 943
    assert pa.compute.count_distinct(result.ratings.column("item_id")).as_py() == 1_682


# -------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_for_a_seed():
    first = synthetic_ratings(5_000, 100, 200, seed=11)
    assert first.equals(synthetic_ratings(5_000, 100, 200, seed=11))
    assert not first.equals(synthetic_ratings(5_000, 100, 200, seed=12))


def test_synthetic_schema_ranges_and_half_stars():
    table = synthetic_ratings(20_000, 300, 400, seed=3)
    assert table.schema.equals(RATING_SCHEMA)
    assert table.num_rows == 20_000
    users, items = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    ratings = table.column("rating").to_numpy()
    assert users.min() >= 1 and users.max() <= 300 and items.min() >= 1 and items.max() <= 400
    assert set(np.unique(ratings)) <= {x / 2 for x in range(1, 11)}
    assert len(np.unique(ratings)) >= 8  # the noise and the biases spread the ratings
    assert 2.5 < ratings.mean() < 4.5


def test_synthetic_whole_stars_and_other_scale():
    ratings = synthetic_ratings(5_000, 50, 50, half_stars=False, scale=(1, 5)).column("rating")
    assert set(np.unique(ratings.to_numpy())) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_synthetic_popularity_follows_a_power_law():
    def top_one_percent_share(table: pa.Table, column: str) -> float:
        counts = np.sort(np.bincount(table.column(column).to_numpy()))[::-1]
        return counts[: len(counts) // 100].sum() / counts.sum()

    skewed = synthetic_ratings(50_000, 2_000, 2_000, seed=5, popularity_exponent=1.0)
    uniform = synthetic_ratings(50_000, 2_000, 2_000, seed=5, popularity_exponent=0.0)
    # Zipf with exponent 1 over 2,000 ids: the top 20 hold H(20)/H(2000) ~ 44% of draws.
    assert top_one_percent_share(skewed, "item_id") > 0.3
    assert top_one_percent_share(skewed, "user_id") > 0.3
    assert top_one_percent_share(uniform, "item_id") < 0.05
    # The popular ids are spread out, not just the smallest ones.
    most_popular = np.argsort(np.bincount(skewed.column("item_id").to_numpy()))[-20:]
    assert most_popular.max() > 100


def test_synthetic_ratings_come_from_a_fixed_low_rank_model():
    table = synthetic_ratings(30_000, 30, 30, noise=0.0, seed=2)
    pairs = table.group_by(["user_id", "item_id"]).aggregate([("rating", "min"), ("rating", "max")])
    assert pairs.num_rows < table.num_rows  # pairs repeat, as documented
    assert pairs.column("rating_min").equals(pairs.column("rating_max"))  # no noise: one value
    noisy = synthetic_ratings(30_000, 30, 30, noise=0.5, seed=2)
    noisy_pairs = noisy.group_by(["user_id", "item_id"]).aggregate([("rating", "min"), ("rating", "max")])
    assert not noisy_pairs.column("rating_min").equals(noisy_pairs.column("rating_max"))


def test_synthetic_timestamps_increase_across_chunks(monkeypatch):
    monkeypatch.setattr(datasets, "_CHUNK_ROWS", 1_000)  # force several generation chunks
    table = synthetic_ratings(5_500, 40, 40, start_ts=1_000)
    times = table.column("rated_at").to_numpy()
    assert table.num_rows == 5_500 and times[0] > 1_000
    assert np.all(np.diff(times) > 0)


def test_synthetic_handles_zero_ratings_and_rejects_nonsense():
    assert synthetic_ratings(0, 5, 5).num_rows == 0
    with pytest.raises(ValueError):
        synthetic_ratings(10, 0, 5)


# ---------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["batch.csv", "batch.csv.gz", "batch.parquet"])
def test_written_batches_read_back_unchanged(tmp_path, name):
    table = synthetic_ratings(2_000, 50, 60, seed=9)
    path = write_ratings(table, tmp_path / name)
    result = read_ratings(path)
    # Pairs repeat in synthetic data, so the reader keeps only the latest of each.
    latest = (
        table.append_column("order", pa.array(np.arange(table.num_rows)))
        .sort_by([("user_id", "ascending"), ("item_id", "ascending"), ("rated_at", "descending")])
    )
    first_of_pair = np.r_[True, np.diff(latest.column("user_id").to_numpy()) != 0] | np.r_[
        True, np.diff(latest.column("item_id").to_numpy()) != 0
    ]
    expected = latest.filter(pa.array(first_of_pair)).sort_by("order").drop_columns(["order"])
    assert result.ratings.equals(expected)
    assert result.rejected.num_rows == table.num_rows - expected.num_rows


def test_written_csv_keeps_missing_timestamps_missing(tmp_path):
    table = pa.table(
        [pa.array([1, 2]), pa.array([3, 4]), pa.array([4.5, 1.0]), pa.array([None, 7], pa.int64())],
        schema=RATING_SCHEMA,
    )
    path = write_ratings(table, tmp_path / "t.csv")
    assert path.read_text() == "user_id,item_id,rating,timestamp\n1,3,4.5,\n2,4,1,7\n"
    assert read_ratings(path).ratings.equals(table)


def test_write_ratings_refuses_unknown_extensions(tmp_path):
    with pytest.raises(ValueError, match="expected a .csv"):
        write_ratings(synthetic_ratings(3, 2, 2), tmp_path / "t.xlsx")
