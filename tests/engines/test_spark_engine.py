"""The Spark engine against the DuckDB reference, on real local Spark and real Delta tables.

Everything here runs the same sql/ files through `als_core.engines.sqlgen` for Spark: a
step must give the DuckDB numbers (max abs difference <= 1e-5 over every bias, vector
component and μ), read what DuckDB wrote and be read by it, apply each batch exactly once
on both of its write paths (Arrow, staged Parquet + delta-rs commit), and refuse Delta
tables whose files are not plain Parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from als_core.engines.base import ModelSpec
from als_core.engines.duckdb_engine import DuckDBEngine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, bootstrap_model, create_model
from als_core.schema import DEFAULT_SCALE
from als_core.sgd import SGDParams
from als_core.store.schemas import FACTORS
from als_core.store.versions import compact_factors, model_state, to_factor_model
from als_core.store.warehouse import StoreError, Warehouse

pytestmark = pytest.mark.spark

BATCH = 1_000
N_PARITY = 20
TOL = 1e-5
#: The literal update (summed steps, SGD biases): the other branches of the step's SQL.
SUM_PARAMS = SGDParams(rank=4, gamma=0.03, lambda_=0.05, lambda_bias=0.05, init_scale=0.1, seed=7,
                       aggregation="sum", bias_update="sgd")


# ---------------------------------------------------------------------- helpers


def new_warehouse(path: Path, ratings: pa.Table, n_batches: int, models: dict[str, SGDParams]) -> Warehouse:
    """A warehouse holding the first ``n_batches`` batches of ``ratings`` (no holdout) and
    the given models."""
    wh = Warehouse(str(path))
    wh.ensure_tables()
    for b in range(n_batches):
        ingest_table(wh, ratings.slice(b * BATCH, BATCH), source=f"batch-{b + 1:03d}", holdout_fraction=0.0)
    for model_id, params in models.items():
        create_model(wh, model_id, params)
    return wh


def state(wh: Warehouse, model_id: str, version: int | None = None) -> dict:
    """(side, id) -> (n, bias, vector) of a model's state as of a version."""
    rows = model_state(wh, model_id, version).to_pylist()
    return {(r["side"], r["id"]): (r["n"], r["bias"], None if r["vector"] is None else np.asarray(r["vector"]))
            for r in rows}


def max_state_diff(a: dict, b: dict) -> float:
    """Max abs difference over biases (μ included: the global row's bias) and vector
    components; the keys and counts must be identical."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key, (n, bias, vector) in a.items():
        n_b, bias_b, vector_b = b[key]
        assert n == n_b, key
        worst = max(worst, abs(bias - bias_b))
        if vector is not None or vector_b is not None:
            assert vector.shape == vector_b.shape, key
            worst = max(worst, float(np.abs(vector - vector_b).max()))
    return worst


def versions_written(wh: Warehouse, model_id: str) -> list[int]:
    return wh.model_versions(model_id)["batch_seq"].to_pylist()


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spark_engine(spark):
    from als_core.engines.spark_engine import SparkEngine

    engine = SparkEngine(spark=spark)
    yield engine
    engine.close()  # does not stop a session it did not create


@pytest.fixture(scope="module")
def parity(tmp_path_factory, shipped, spark_engine):
    """The first 20 batches of 1,000 shipped ratings applied to the default model by each
    engine, in two fresh warehouses."""
    root = tmp_path_factory.mktemp("parity")
    data = shipped.slice(0, (N_PARITY + 1) * BATCH)
    warehouses, reports = {}, {}
    for name, engine in (("duckdb", DuckDBEngine()), ("spark", spark_engine)):
        warehouses[name] = new_warehouse(root / name, data, N_PARITY, {"m": DEFAULT_PARAMS})
        reports[name] = apply_pending(warehouses[name], engine, evaluate_every=0)
    return warehouses, reports, data


# ---------------------------------------------------------------------- tests


def test_spark_step_matches_duckdb_on_20_batches(parity):
    warehouses, reports, _ = parity
    for report in reports.values():
        assert not report.failures
        assert [a.batch_seq for a in report.applied] == list(range(1, N_PARITY + 1))
    for version in (N_PARITY, N_PARITY // 2, 1):
        duck, spark = state(warehouses["duckdb"], "m", version), state(warehouses["spark"], "m", version)
        assert len(duck) > (3_000 if version == N_PARITY else 500)
        assert max_state_diff(duck, spark) <= TOL, f"version {version}"
    # μ and the rating count (the global row) too, and the prequential scores of every batch
    for duck, spark in zip(reports["duckdb"].applied, reports["spark"].applied):
        assert duck.n_rows == spark.n_rows
        assert spark.prequential_rmse == pytest.approx(duck.prequential_rmse, abs=TOL)
    mu = [wh.model_versions("m")["mu"].to_numpy() for wh in warehouses.values()]
    assert np.abs(mu[0] - mu[1]).max() <= TOL


def test_spark_score_matches_duckdb(parity, spark_engine):
    warehouses, _, data = parity
    unseen = data.slice(N_PARITY * BATCH, BATCH)  # the next batch: known and unknown ids
    duck_engine = DuckDBEngine()
    for version in (N_PARITY, 5):
        expected = duck_engine.score(warehouses["duckdb"], "m", unseen, version, DEFAULT_SCALE).sort_by("rating_seq")
        got = spark_engine.score(warehouses["spark"], "m", unseen, version, DEFAULT_SCALE)
        assert got["rating_seq"].to_pylist() == expected["rating_seq"].to_pylist() == list(range(BATCH))
        diff = np.abs(got["prediction"].to_numpy() - expected["prediction"].to_numpy()).max()
        assert diff <= TOL, f"version {version}"


def test_spark_prequential_scores_equal_scoring_the_model_before_the_batch(parity, spark_engine):
    """rating_errors' prequential predictions follow score_ratings.sql on Spark too (known
    and never-seen keys); the step is not committed."""
    warehouses, _, data = parity
    wh = warehouses["spark"]
    batch = data.slice(N_PARITY * BATCH, BATCH)
    spec = ModelSpec("m", DEFAULT_PARAMS)
    step = spark_engine.step(wh, spec, batch, wh.current_version("m") + 1, 999, DEFAULT_SCALE)
    scored = spark_engine.score(wh, "m", batch, None, DEFAULT_SCALE)
    assert step.prequential["rating_seq"].to_pylist() == scored["rating_seq"].to_pylist() == list(range(BATCH))
    assert np.abs(step.prequential["prediction"].to_numpy() - scored["prediction"].to_numpy()).max() <= 1e-12


def test_exactly_once_on_spark(parity, spark_engine):
    warehouses, _, data = parity
    wh = warehouses["spark"]
    spec = ModelSpec.from_record(wh.model_record("m"))
    delta_version = wh.table("factors").version()
    # applying the same batches again writes nothing
    again = apply_pending(wh, spark_engine, evaluate_every=0)
    assert again.applied == [] and not again.failures
    assert wh.table("factors").version() == delta_version
    assert versions_written(wh, "m") == list(range(1, N_PARITY + 1))
    # a result for a batch already applied is not committed
    last = wh.ledger().to_pylist()[-1]
    stale = spark_engine.step(wh, spec, wh.batch_ratings(last["batch_id"], holdout=False), N_PARITY + 1,
                              last["seq"], DEFAULT_SCALE)
    assert spark_engine.commit_step(wh, "m", stale, last["seq"]) is False
    assert wh.table("factors").version() == delta_version
    # a new batch: the first commit of (model, seq) writes one version, the second is a no-op
    outcome = ingest_table(wh, data.slice(N_PARITY * BATCH, BATCH), source="batch-021", holdout_fraction=0.0)
    seq = outcome.seq
    result = spark_engine.step(wh, spec, wh.batch_ratings(outcome.batch_id, holdout=False), N_PARITY + 1, seq,
                               DEFAULT_SCALE)
    assert spark_engine.commit_step(wh, "m", result, seq) is True
    assert spark_engine.commit_step(wh, "m", result, seq) is False
    assert apply_pending(wh, spark_engine, evaluate_every=0).applied == []
    assert wh.table("factors").version() == delta_version + 1
    assert wh.applied_seq("m") == seq
    assert versions_written(wh, "m") == list(range(1, seq + 1))


def test_tables_written_by_one_engine_are_read_by_the_other(tmp_path, shipped, spark_engine):
    """5 batches on DuckDB, 5 on Spark (reading DuckDB's files), 2 on DuckDB again (reading
    Spark's) = 12 on DuckDB alone."""
    data = shipped.slice(0, 12 * BATCH)
    mixed = new_warehouse(tmp_path / "mixed", data, 12, {"s": SUM_PARAMS})
    alone = new_warehouse(tmp_path / "alone", data, 12, {"s": SUM_PARAMS})
    duck = DuckDBEngine()
    for engine, n in ((duck, 5), (spark_engine, 5), (duck, None)):
        report = apply_pending(mixed, engine, evaluate_every=0, max_batches=n)
        assert not report.failures
    assert not apply_pending(alone, duck, evaluate_every=0).failures
    assert versions_written(mixed, "s") == versions_written(alone, "s") == list(range(1, 13))
    for version in (5, 10, 12):
        assert max_state_diff(state(alone, "s", version), state(mixed, "s", version)) <= TOL, f"version {version}"


def test_spark_reads_a_tiered_compaction_like_duckdb(tmp_path, shipped, spark_engine):
    """A full compaction after 4 batches, 4 more, a tiered one (the base files plus one merged
    file), then 2 batches on Spark: the same states as 10 batches on DuckDB, never compacted."""
    data = shipped.slice(0, 10 * BATCH)
    tiered = new_warehouse(tmp_path / "tiered", data, 10, {"s": SUM_PARAMS})
    alone = new_warehouse(tmp_path / "alone", data, 10, {"s": SUM_PARAMS})
    duck = DuckDBEngine()
    apply_pending(tiered, duck, evaluate_every=0, compact_every=0, max_batches=4)
    assert compact_factors(tiered, "s", full=True)["kind"] == "full"
    apply_pending(tiered, duck, evaluate_every=0, compact_every=0, max_batches=4)
    assert compact_factors(tiered, "s", full=False)["kind"] == "tiered"
    assert not apply_pending(tiered, spark_engine, evaluate_every=0, compact_every=0).failures
    assert not apply_pending(alone, duck, evaluate_every=0, compact_every=0).failures
    for version in (4, 6, 8, 10):
        assert max_state_diff(state(alone, "s", version), state(tiered, "s", version)) <= TOL, f"version {version}"


def test_refuses_delta_tables_that_are_not_plain_parquet(tmp_path, shipped, spark, spark_engine):
    wh = Warehouse(str(tmp_path / "dv"))
    # a factors table with deletion vectors enabled (reader version 3): its files alone are
    # not the table, so a Parquet reader without Delta support would read wrong rows
    write_deltalake(wh.table_uri("factors"), FACTORS.empty_table(), partition_by=["model_id"],
                    configuration={"delta.enableDeletionVectors": "true"})
    protocol = DeltaTable(wh.table_uri("factors")).protocol()
    assert protocol.min_reader_version > 1 and "deletionVectors" in protocol.reader_features
    wh.ensure_tables()
    ingest_table(wh, shipped.slice(0, BATCH), source="batch-001", holdout_fraction=0.0)
    spec = create_model(wh, "m", DEFAULT_PARAMS)
    batch = wh.batch_ratings(wh.ledger()["batch_id"][0].as_py())
    with pytest.raises(StoreError, match=r"reader version 3.*deletionVectors.*plain Parquet"):
        spark_engine.step(wh, spec, batch, 1, 1, DEFAULT_SCALE)
    with pytest.raises(StoreError, match="deletionVectors"):
        spark_engine.score(wh, "m", batch, None, DEFAULT_SCALE)
    rows = pa.table({"model_id": ["m"], "version": [1], "side": ["global"], "id": [0], "n": [1], "bias": [3.5],
                     "vector": pa.array([None], pa.list_(pa.float32())), "batch_seq": [1]}).cast(FACTORS)
    with pytest.raises(StoreError, match=r"reader version 3.*deletionVectors"):
        spark_engine.commit_staged_version(wh, "m", spark.createDataFrame(rows), 1)
    assert wh.applied_seq("m") == 0


def test_staged_parquet_commit(tmp_path, parity, spark, spark_engine):
    """Above ``arrow_max_rows`` the rows stay on the cluster: Spark writes Parquet into the
    table folder and delta-rs commits the files with the app transaction. (Above
    ``in_list_max`` batch ids the stored rows are read through a semi-join.)"""
    from als_core.engines.spark_engine import SparkEngine

    warehouses, _, data = parity
    # force the large-batch paths: staged writes, and stored rows selected by a semi-join
    engine = SparkEngine(spark=spark, arrow_max_rows=0, in_list_max=0)
    wh = new_warehouse(tmp_path / "staged", data, 4, {"m": DEFAULT_PARAMS})
    spec = ModelSpec.from_record(wh.model_record("m"))
    for batch in wh.ledger().to_pylist()[:3]:
        seq = batch["seq"]
        train = wh.batch_ratings(batch["batch_id"], holdout=False)
        result = engine.step(wh, spec, train, seq, seq, DEFAULT_SCALE)
        assert result.staged and result.rows is None
        expected_rows = len(set(train["user_id"].to_pylist())) + len(set(train["item_id"].to_pylist())) + 1
        assert result.n_rows == expected_rows
        assert result.prequential.num_rows == (0 if seq == 1 else train.num_rows)  # nothing to score with at first
        assert engine.check_frame(result.frame, spec.params.rank) is None
        assert engine.commit_step(wh, "m", result, seq) is True
    # the same rows as the Arrow path (the DuckDB run of the parity test, same data and model)
    assert max_state_diff(state(warehouses["duckdb"], "m", 3), state(wh, "m")) <= TOL
    # one commit per batch, each carrying the app transaction; the files sit in the model's
    # partition with the partition value and min/max statistics
    dt = wh.table("factors")
    assert dt.transaction_version("m") == 3
    adds = pa.table(dt.get_add_actions(flatten=True))
    paths = adds["path"].to_pylist()
    assert paths and all(p.startswith("model_id=m/staging-") for p in paths)
    assert set(adds["partition.model_id"].to_pylist()) == {"m"}
    assert sum(adds["num_records"].to_pylist()) == len(wh.factor_rows("m"))
    assert pc.min(adds["min.version"]).as_py() == 1 and pc.max(adds["max.version"]).as_py() == 3
    assert all(v is not None for v in adds["min.id"].to_pylist() + adds["max.id"].to_pylist())
    log = [json.loads(line) for f in sorted(Path(dt.table_uri.replace("file://", ""), "_delta_log").glob("*.json"))
           for line in f.read_text().splitlines()]
    txns = [entry["txn"] for entry in log if "txn" in entry]
    assert [(t["appId"], t["version"]) for t in txns] == [("m", 1), ("m", 2), ("m", 3)]
    # committing a batch again is a no-op and leaves no staging folder behind
    delta_version = dt.version()
    last = wh.ledger().to_pylist()[2]
    again = engine.step(wh, spec, wh.batch_ratings(last["batch_id"], holdout=False), 4, last["seq"], DEFAULT_SCALE)
    assert engine.commit_step(wh, "m", again, last["seq"]) is False
    assert again.frame is None  # released
    assert wh.table("factors").version() == delta_version
    folders = sorted(p.name for p in (Path(wh.uri) / "factors" / "model_id=m").iterdir() if p.is_dir())
    assert len(folders) == 3 and all(name.startswith("staging-") for name in folders)
    # DuckDB reads the files Spark wrote: batch 4 on DuckDB = 4 batches on DuckDB
    assert [a.batch_seq for a in apply_pending(wh, DuckDBEngine(), evaluate_every=0).applied] == [4]
    assert max_state_diff(state(warehouses["duckdb"], "m", 4), state(wh, "m")) <= TOL
    # the Spark-side check refuses what check_step_rows refuses
    def frame(biases, vectors):
        return spark.createDataFrame(pa.table({
            "model_id": ["m", "m"], "version": [9, 9], "side": ["user", "item"], "id": [1, 2], "n": [1, 1],
            "bias": biases, "vector": pa.array(vectors, pa.list_(pa.float32())), "batch_seq": [9, 9]}))

    assert "non-finite biases" in engine.check_frame(frame([float("nan"), 0.0], [[0.0] * 10] * 2), 10)
    assert "non-finite factor vectors" in engine.check_frame(frame([0.0, 0.0], [[0.0] * 10, [float("inf")] * 10]), 10)
    assert "length 3..10" in engine.check_frame(frame([0.0, 0.0], [[0.0] * 10, [0.0] * 3]), 10)


def test_spark_als_round_trip_through_the_store(tmp_path, shipped, spark, spark_engine):
    from als_core.engines.spark_engine import train_als_spark

    train = shipped.slice(0, 5_000)
    model, als_model, index = train_als_spark(spark, train, rank=4, max_iter=5, reg_param=0.1, seed=3,
                                              return_spark_model=True)
    users, items = train["user_id"].to_numpy(), train["item_id"].to_numpy()
    ratings = train["rating"].to_numpy()
    assert model.mu == pytest.approx(ratings.mean())
    assert not model.user_bias.any() and not model.item_bias.any()
    assert model.n_ratings == train.num_rows and model.user_counts.sum() == train.num_rows
    predictions = model.predict(users, items)
    assert np.sqrt(np.mean((predictions - ratings) ** 2)) < 0.9  # it learned something
    # MLlib's own predictions (fitted to r - μ) are the FactorModel's, minus μ
    u, i = index(users[:200], items[:200])
    frame = spark.createDataFrame(pa.table({"user": pa.array(u.astype(np.int32)), "item": pa.array(i.astype(np.int32))}))
    mllib = als_model.transform(frame).toArrow()
    by_pair = dict(zip(zip(mllib["user"].to_pylist(), mllib["item"].to_pylist()), mllib["prediction"].to_pylist()))
    expected = np.array([by_pair[(int(a), int(b))] for a, b in zip(u, i)]) + model.mu
    assert np.abs(expected - predictions[:200]).max() < 1e-4
    # bootstrap into the store, read back: the same model (vectors are float32 already)
    wh = Warehouse(str(tmp_path / "als"))
    create_model(wh, "als", SGDParams(rank=4, aggregation="mean", bias_update="running_mean"))
    version = bootstrap_model(wh, "als", model, through_seq=None)
    back = to_factor_model(model_state(wh, "als", version))
    assert back.mu == model.mu and back.n_ratings == model.n_ratings
    np.testing.assert_array_equal(back.user_ids, model.user_ids)
    np.testing.assert_array_equal(back.item_factors, model.item_factors)
    np.testing.assert_array_equal(back.predict(users, items), predictions)
    # and the Spark engine scores with it as the model does (cold-start rule included)
    probe = shipped.slice(5_000, 500)
    scores = spark_engine.score(wh, "als", probe, None, DEFAULT_SCALE)
    want = model.predict(probe["user_id"].to_numpy(), probe["item_id"].to_numpy(), clip=DEFAULT_SCALE)
    np.testing.assert_allclose(scores["prediction"].to_numpy(), want, atol=1e-9)
