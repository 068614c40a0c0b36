"""sqlgen: the portable vector calls give the numpy reference's numbers in both dialects
(DuckDB's vec_init is the engine's Arrow function around `init_vectors`; Spark's is SQL)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from als_core.engines.duckdb_engine import register_functions
from als_core.engines.sqlgen import render
from als_core.init import SIDE_ITEM, SIDE_USER, init_vectors

# Ids at the edges of the 31-bit halves the hash absorbs separately, and large int64 ids.
IDS = np.array([0, 1, 2, 610, 193_609, 2**31 - 1, 2**31, 2**31 + 5, 2**40 + 3, 2**62 + 11, 2**63 - 1], dtype=np.int64)
INIT_QUERY = "SELECT id, vec_init(seed, side, id, rank, scale) AS v FROM keys ORDER BY side, id"


def keys(seed: int, rank: int, scale: float) -> pa.Table:
    n = len(IDS)
    return pa.table({"seed": [seed] * 2 * n, "side": [SIDE_USER] * n + [SIDE_ITEM] * n,
                     "id": np.concatenate([IDS, IDS]), "rank": [rank] * 2 * n, "scale": [scale] * 2 * n})


def expected(seed: int, rank: int, scale: float) -> np.ndarray:
    return np.vstack([init_vectors(seed, SIDE_USER, IDS, rank, scale), init_vectors(seed, SIDE_ITEM, IDS, rank, scale)])


@pytest.mark.parametrize("seed,rank,scale", [(42, 10, 0.1), (7, 3, 0.5), (2**31 + 9, 1, 1.0)])
def test_vec_init_in_duckdb_equals_init_vectors_exactly(seed, rank, scale):
    con = duckdb.connect()
    register_functions(con)
    con.register("keys", keys(seed, rank, scale))
    got = np.array(con.sql(render(INIT_QUERY, "duckdb")).fetchnumpy()["v"].tolist())
    np.testing.assert_array_equal(got, expected(seed, rank, scale))


def test_vec_init_in_duckdb_handles_rows_of_different_models_in_one_chunk():
    table = pa.concat_tables([keys(42, 10, 0.1), keys(7, 3, 0.5)])
    con = duckdb.connect()
    register_functions(con)
    con.register("keys", table)
    got = con.sql(render("SELECT vec_init(seed, side, id, rank, scale) AS v FROM keys", "duckdb")).fetchnumpy()["v"]
    want = list(expected(42, 10, 0.1)) + list(expected(7, 3, 0.5))
    assert len(got) == len(want) == table.num_rows
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)


@pytest.mark.spark
def test_vec_init_in_spark_equals_init_vectors_exactly(spark):
    seed, rank, scale = 42, 10, 0.1
    spark.createDataFrame(keys(seed, rank, scale).to_pandas()).createOrReplaceTempView("keys")
    rows = spark.sql(render(INIT_QUERY, "spark")).collect()
    np.testing.assert_array_equal(np.array([r["v"] for r in rows]), expected(seed, rank, scale))


AXPBY_QUERY = ("SELECT id, vec_axpby_float(a, x, b, y) AS v "
               "FROM (SELECT id, a, b, vec_load(x) AS x, vec_load(y) AS y FROM vectors) ORDER BY id")
DOT_QUERY = "SELECT id, vec_dot(x, y) AS d FROM (SELECT id, vec_load(x) AS x, vec_load(y) AS y FROM vectors) ORDER BY id"


def axpby_inputs() -> pa.Table:
    """Rows of a x + b y, the last two outside FLOAT's range (finite in DOUBLE)."""
    return pa.table({"id": [1, 2, 3, 4], "a": [1.0, 0.5, 1e30, 1.0], "b": [0.25, -2.0, 1.0, 1e300],
                     "x": [[1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [1e10, 1e-30, 0.0], [0.0, 1.0, 2.0]],
                     "y": [[4.0, 5.0, 6.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]})


def axpby_expected() -> list:
    rows = axpby_inputs().to_pylist()
    return [[float(np.float32(r["a"] * x + r["b"] * y)) for x, y in zip(r["x"], r["y"])] for r in rows[:2]]


def test_vec_axpby_float_in_duckdb_is_written_per_component_and_nulls_what_float_cannot_hold():
    sql = render(AXPBY_QUERY, "duckdb", 3)
    assert "LIST_TRANSFORM" not in sql.upper() and sql.count("TRY_CAST") == 3  # a vector is a STRUCT
    with pytest.raises(ValueError, match="rank"):
        render(AXPBY_QUERY, "duckdb")
    con = duckdb.connect()
    con.register("vectors", axpby_inputs())
    got = con.sql(sql).fetchall()
    assert [v for _, v in got[:2]] == axpby_expected()
    assert got[2][1] == [None, 1.0, 0.0]  # 1e40 is no FLOAT: NULL, which the caller refuses
    assert got[3][1] == [0.0, 1.0, None]


@pytest.mark.spark
def test_vec_axpby_float_in_spark_gives_the_same_floats(spark):
    spark.createDataFrame(axpby_inputs().to_pandas()).createOrReplaceTempView("vectors")
    rows = spark.sql(render(AXPBY_QUERY, "spark", 3)).collect()
    assert [list(r["v"]) for r in rows[:2]] == axpby_expected()
    assert np.isinf(rows[2]["v"][0]) and np.isinf(rows[3]["v"][2])  # refused by the caller too


@pytest.mark.spark
def test_vec_dot_in_both_dialects_adds_the_products_in_component_order(spark):
    """DuckDB adds the struct fields' products left to right, Spark's aggregate too: the same
    bits in either engine."""
    want = [sum_in_order(r["x"], r["y"]) for r in axpby_inputs().to_pylist()]
    con = duckdb.connect()
    con.register("vectors", axpby_inputs())
    assert [d for _, d in con.sql(render(DOT_QUERY, "duckdb", 3)).fetchall()] == want
    spark.createDataFrame(axpby_inputs().to_pandas()).createOrReplaceTempView("vectors")
    assert [r["d"] for r in spark.sql(render(DOT_QUERY, "spark", 3)).collect()] == want


def test_vec_load_keeps_a_null_vector_null():
    con = duckdb.connect()
    con.register("stored", pa.table({"v": pa.array([[1.5, 2.5], None], pa.list_(pa.float32()))}))
    assert con.sql(render("SELECT vec_load(v) AS v FROM stored", "duckdb", 2)).fetchall() == [
        ({"c1": 1.5, "c2": 2.5},), (None,)]


def sum_in_order(x, y) -> float:
    total = 0.0
    for a, b in zip(x, y):
        total += a * b
    return total
