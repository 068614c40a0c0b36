"""Rating data sets: the shipped MovieLens sample, the optional ml-100k, synthetic streams.

- ``load_shipped()``: MovieLens latest-small (100,836 ratings, 610 users, 9,724 movies),
  shipped inside the package with its README (GroupLens terms allow redistribution).
- ``ml100k_path()``: MovieLens 100k may not be redistributed, so it is only found where it
  already lies (``STREAMING_ALS_ML100K`` or ``../shared/data/ml-100k`` beside the repository);
  ``None`` when absent, and callers skip.
- ``synthetic_ratings(...)``: a large, deterministic low-rank rating stream for benchmarks.
- ``write_ratings(table, path)``: CSV or Parquet files (e.g. micro-batches) ``read_ratings``
  reads back.

>>> table = synthetic_ratings(1_000, n_users=50, n_items=80, seed=1)
>>> table.schema.equals(RATING_SCHEMA), table.num_rows
(True, 1000)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from als_core.readers import read_ratings
from als_core.schema import RATING_SCHEMA

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent
ML100K_ENV = "STREAMING_ALS_ML100K"

# Rows generated per step: bounds the temporaries (about 200 bytes a row at rank 10) while
# keeping numpy calls large. Fixed, so output for a seed never depends on machine or size.
_CHUNK_ROWS = 1 << 20


def shipped_ratings_path() -> Path:
    """The MovieLens latest-small ``ratings.csv`` shipped inside the package.

    >>> shipped_ratings_path().name
    'ratings.csv'
    """
    return _PACKAGE_DIR / "data" / "ml-latest-small" / "ratings.csv"


def load_shipped() -> pa.Table:
    """The shipped ratings as a RATING_SCHEMA table (100,836 rows; the file has no bad rows).

    >>> load_shipped().num_rows
    100836
    """
    return read_ratings(shipped_ratings_path()).ratings


def ml100k_path(root: str | Path | None = None) -> Path | None:
    """Where MovieLens 100k ``u.data`` lies, or None when it is not on this machine.

    Looked for, first found wins: ``root/ml-100k/u.data`` (``root`` is a data folder such as
    ``shared/data``); the ``STREAMING_ALS_ML100K`` environment variable (the ``u.data`` file
    or its folder); ``../shared/data/ml-100k/u.data`` beside the repository.

    >>> ml100k_path("/nonexistent") is None
    True
    """
    if root is not None:
        candidates = [Path(root) / "ml-100k" / "u.data"]
    else:
        candidates = []
        if os.environ.get(ML100K_ENV):
            from_env = Path(os.environ[ML100K_ENV])
            candidates.append(from_env / "u.data" if from_env.is_dir() else from_env)
        candidates.append(_REPO_DIR.parent / "shared" / "data" / "ml-100k" / "u.data")
    return next((path for path in candidates if path.is_file()), None)


def synthetic_ratings(
    n_ratings: int,
    n_users: int,
    n_items: int,
    *,
    rank: int = 10,
    noise: float = 0.5,
    seed: int = 0,
    popularity_exponent: float = 1.0,
    scale: tuple[float, float] = (0.5, 5.0),
    half_stars: bool = True,
    start_ts: int = 1_500_000_000,
) -> pa.Table:
    """A deterministic synthetic rating stream (RATING_SCHEMA), for benchmarks and tests.

    rating = mean + user bias + item bias + <user factors, item factors> + N(0, noise²),
    rounded to half stars (whole stars if ``half_stars`` is False) and clipped to ``scale``.
    Users and items are drawn with Zipf-like popularity: the k-th most popular has weight
    ``k ** -popularity_exponent`` (0 = uniform); which ids are popular is shuffled. Ids run
    from 1 to ``n_users`` / ``n_items``; ``rated_at`` strictly increases from ``start_ts``
    (1 to 20 s apart). The same (user, item) pair may occur more than once, like a real
    stream; deduplicating 20M rows would cost more than it is worth here.

    >>> first = synthetic_ratings(500, 20, 30, seed=7)
    >>> first.equals(synthetic_ratings(500, 20, 30, seed=7))
    True
    >>> sorted(set(first.column("rating").to_pylist()))[:3]
    [0.5, 1.0, 1.5]
    """
    if min(n_ratings, n_users, n_items, rank) < 0 or n_users == 0 or n_items == 0:
        raise ValueError("n_ratings and rank must be >= 0, n_users and n_items > 0")
    low, high = scale
    rng = np.random.default_rng(seed)
    spread = (high - low) / 4.5  # the MovieLens 0.5-5 scale has spread 1
    mean = low + 0.66 * (high - low)  # MovieLens averages ~3.5 of 5
    # Each factor entry has std s with rank * s**4 = 0.6: the dot product's std is ~0.77.
    factor_std = (0.6 / max(rank, 1)) ** 0.25 * np.sqrt(spread)
    user_factors = rng.normal(0.0, factor_std, (n_users, rank))
    item_factors = rng.normal(0.0, factor_std, (n_items, rank))
    user_bias = rng.normal(0.0, 0.35 * spread, n_users)
    item_bias = rng.normal(0.0, 0.5 * spread, n_items)
    # Which ids are popular is random, not simply the smallest ids.
    user_by_rank = rng.permutation(n_users)
    item_by_rank = rng.permutation(n_items)

    step = 0.5 if half_stars else 1.0
    # Clip to the steps inside the scale, so whole stars never fall below 1 on a 0.5-5 scale.
    lowest, highest = np.ceil(low / step) * step, np.floor(high / step) * step
    batches, last_ts = [], start_ts
    for start in range(0, n_ratings, _CHUNK_ROWS):
        size = min(_CHUNK_ROWS, n_ratings - start)
        users = user_by_rank[_power_law_ranks(n_users, popularity_exponent, rng, size)]
        items = item_by_rank[_power_law_ranks(n_items, popularity_exponent, rng, size)]
        raw = (
            mean
            + user_bias[users]
            + item_bias[items]
            # np.take gathers rows several times faster than fancy indexing or einsum.
            + (np.take(user_factors, users, axis=0) * np.take(item_factors, items, axis=0)).sum(1)
            + rng.normal(0.0, noise * spread, size)
        )
        ratings = np.clip(np.round(raw / step) * step, lowest, highest)
        times = last_ts + np.cumsum(rng.integers(1, 21, size, dtype=np.int64))
        last_ts = int(times[-1])
        batches.append(
            pa.record_batch(
                [
                    pa.array(users.astype(np.int64) + 1),
                    pa.array(items.astype(np.int64) + 1),
                    pa.array(ratings),
                    pa.array(times),
                ],
                schema=RATING_SCHEMA,
            )
        )
    return pa.Table.from_batches(batches, schema=RATING_SCHEMA)


def _power_law_ranks(n: int, exponent: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """Popularity ranks in [0, n) with P(rank k) roughly proportional to (k + 1) ** -exponent.

    Inverse-transform sampling of the continuous density x ** -exponent on [1, n + 1],
    floored: O(1) per draw, unlike a search in a cumulative table.
    """
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = (n + 1.0) ** u
    else:
        power = 1.0 - exponent
        x = (1.0 + u * ((n + 1.0) ** power - 1.0)) ** (1.0 / power)
    return np.minimum(x.astype(np.int64) - 1, n - 1)  # min: guards rounding at the top end


def write_ratings(table: pa.Table, path: str | Path) -> Path:
    """Write ratings to ``path``: Parquet for ``.parquet``, CSV for ``.csv`` / ``.csv.gz``.

    The CSV has the header ``user_id,item_id,rating,timestamp`` (null ``rated_at`` is an
    empty field), so ``read_ratings`` reads it back unchanged.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "batch.csv"
    >>> table = pa.table({"user_id": [1, 2], "item_id": [5, 5], "rating": [4.5, 3.0],
    ...                   "rated_at": [10, None]}, schema=RATING_SCHEMA)
    >>> _ = write_ratings(table, path)
    >>> path.read_text().splitlines()[0]
    'user_id,item_id,rating,timestamp'
    >>> read_ratings(path).ratings.equals(table)
    True
    """
    path = Path(path)
    table = table.select(RATING_SCHEMA.names).cast(RATING_SCHEMA)
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        pq.write_table(table, path)
    elif name.endswith((".csv", ".csv.gz")):
        compression = "gzip" if name.endswith(".gz") else None
        with pa.output_stream(path, compression=compression) as out:
            # Written by hand: pyarrow quotes header names, and a plain header reads better.
            out.write(b"user_id,item_id,rating,timestamp\n")
            pa_csv.write_csv(
                table.rename_columns(["user_id", "item_id", "rating", "timestamp"]),
                out,
                pa_csv.WriteOptions(include_header=False),
            )
    else:
        raise ValueError(f"{path}: expected a .csv, .csv.gz or .parquet file name")
    return path


def synthetic_truth(
    n_users: int,
    n_items: int,
    *,
    rank: int = 10,
    seed: int = 0,
    scale: tuple[float, float] = (0.5, 5.0),
) -> dict:
    """The latent model behind ``synthetic_ratings`` with the same arguments: ``mean``,
    ``user_bias``, ``item_bias``, ``user_factors``, ``item_factors`` (row k is id k + 1).

    Replays the generator's first draws, so a benchmark can bootstrap a store with the true
    factors of a stream (its prequential error then sits near the noise level).

    >>> t = synthetic_truth(20, 30, rank=4, seed=7)
    >>> r = synthetic_ratings(5, 20, 30, rank=4, seed=7, noise=0.0, half_stars=False)
    >>> u, i = r["user_id"].to_numpy() - 1, r["item_id"].to_numpy() - 1
    >>> exact = t["mean"] + t["user_bias"][u] + t["item_bias"][i] + (t["user_factors"][u] * t["item_factors"][i]).sum(1)
    >>> bool(np.all(np.clip(np.round(exact), 1.0, 5.0) == r["rating"].to_numpy()))
    True
    """
    low, high = scale
    rng = np.random.default_rng(seed)
    spread = (high - low) / 4.5
    factor_std = (0.6 / max(rank, 1)) ** 0.25 * np.sqrt(spread)
    user_factors = rng.normal(0.0, factor_std, (n_users, rank))
    item_factors = rng.normal(0.0, factor_std, (n_items, rank))
    user_bias = rng.normal(0.0, 0.35 * spread, n_users)
    item_bias = rng.normal(0.0, 0.5 * spread, n_items)
    return {"mean": low + 0.66 * (high - low), "user_bias": user_bias, "item_bias": item_bias,
            "user_factors": user_factors, "item_factors": item_factors}
