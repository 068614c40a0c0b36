"""The DuckDB engine runs the sql/ step and matches the numpy reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from als_core.engines import duckdb_engine
from als_core.engines.base import get_engine
from als_core.engines.duckdb_engine import vec_init_arrow
from als_core.engines.base import ModelSpec
from als_core.pipeline.apply import NumericalFaultError, apply_pending, check_step_rows
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, bootstrap_model, create_model, factor_rows_from_model
from als_core.sgd import SGDParams, empty_model, replay
from als_core.store.versions import model_state, to_factor_model


def ingest_batches(warehouse, ratings, batch_size=1000):
    for start in range(0, ratings.num_rows, batch_size):
        ingest_table(warehouse, ratings.slice(start, batch_size), source=f"test[{start}]", holdout=False)


def max_abs_diff(stored, reference) -> float:
    """Largest difference over μ, every bias and every vector component."""
    assert np.array_equal(stored.user_ids, reference.user_ids)
    assert np.array_equal(stored.item_ids, reference.item_ids)
    return max(
        abs(stored.mu - reference.mu),
        np.abs(stored.user_bias - reference.user_bias).max(),
        np.abs(stored.item_bias - reference.item_bias).max(),
        np.abs(stored.user_factors - reference.user_factors).max(),
        np.abs(stored.item_factors - reference.item_factors).max(),
    )


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("duckdb")
    yield eng
    eng.close()


@pytest.mark.slow
def test_replay_of_the_shipped_set_matches_the_numpy_reference(tmp_path_factory, shipped, engine):
    """Parity (issue 3): every batch of 1,000 ratings of the shipped set through DuckDB + Delta
    equals the numpy mini-batch reference with float32 storage (max abs diff <= 1e-5)."""
    from als_core.store.warehouse import Warehouse

    warehouse = Warehouse(str(tmp_path_factory.mktemp("parity")))
    ingest_batches(warehouse, shipped)
    create_model(warehouse, "default", DEFAULT_PARAMS)
    report = apply_pending(warehouse, engine, evaluate_every=0, compact_every=40)
    assert len(report.applied) == 101 and not report.failures
    reference = replay(shipped["user_id"].to_numpy(), shipped["item_id"].to_numpy(), shipped["rating"].to_numpy(),
                       DEFAULT_PARAMS, 1000, store_float32=True)
    stored = to_factor_model(model_state(warehouse, "default"))
    assert stored.n_ratings == shipped.num_rows
    assert max_abs_diff(stored, reference) <= 1e-5
    assert np.array_equal(stored.user_counts, reference.user_counts)


@pytest.mark.parametrize("aggregation,bias_update", [("sum", "sgd"), ("mean", "sgd"), ("sum", "running_mean")])
def test_every_update_rule_matches_the_reference(warehouse, shipped, engine, aggregation, bias_update):
    params = SGDParams(rank=6, gamma=0.01, lambda_=0.05, lambda_bias=0.1, seed=7,
                       aggregation=aggregation, bias_update=bias_update)
    head = shipped.slice(0, 8000)
    ingest_batches(warehouse, head)
    create_model(warehouse, "m", params)
    apply_pending(warehouse, engine, evaluate_every=0)
    reference = replay(head["user_id"].to_numpy(), head["item_id"].to_numpy(), head["rating"].to_numpy(),
                       params, 1000, store_float32=True)
    assert max_abs_diff(to_factor_model(model_state(warehouse, "m")), reference) <= 1e-5


def test_sum_and_mean_aggregation_give_different_factors(warehouse, shipped, engine):
    head = shipped.slice(0, 2000)
    ingest_batches(warehouse, head)
    for agg in ("sum", "mean"):
        create_model(warehouse, agg, SGDParams(rank=4, aggregation=agg))
    apply_pending(warehouse, engine, evaluate_every=0)
    a = to_factor_model(model_state(warehouse, "sum"))
    b = to_factor_model(model_state(warehouse, "mean"))
    assert np.abs(a.user_factors - b.user_factors).max() > 1e-3


def test_warm_start_continues_from_a_bootstrapped_model(warehouse, shipped, engine):
    from als_core.als import fit_als

    head = shipped.slice(0, 3000)
    ingest_batches(warehouse, head)
    create_model(warehouse, "warm", DEFAULT_PARAMS)
    first = head.slice(0, 1000)
    als = fit_als(first["user_id"].to_numpy(), first["item_id"].to_numpy(), first["rating"].to_numpy(), rank=10)
    bootstrap_model(warehouse, "warm", als, through_seq=1)
    report = apply_pending(warehouse, engine, evaluate_every=0)
    assert [a.batch_seq for a in report.applied] == [2, 3]  # batch 1 is inside the bootstrap
    rest = head.slice(1000)
    start = to_factor_model(factor_rows_from_model("warm", als, 1))  # the bootstrap as stored (float32)
    reference = replay(rest["user_id"].to_numpy(), rest["item_id"].to_numpy(), rest["rating"].to_numpy(),
                       DEFAULT_PARAMS, 1000, model=start, store_float32=True)
    assert max_abs_diff(to_factor_model(model_state(warehouse, "warm")), reference) <= 1e-5


def test_a_diverging_step_is_refused_and_recorded(warehouse, shipped, engine):
    ingest_batches(warehouse, shipped.slice(0, 3000))
    create_model(warehouse, "wild", SGDParams(rank=8, gamma=1e6, lambda_=0.0, aggregation="sum"))
    report = apply_pending(warehouse, engine, evaluate_every=0)
    assert "wild" in report.failures and "non-finite" in report.failures["wild"]
    last_good = warehouse.current_version("wild")
    assert last_good < 3  # never reached the last batch
    assert np.all(np.isfinite(to_factor_model(model_state(warehouse, "wild")).user_factors))
    assert "non-finite" in warehouse.model_record("wild")["note"]
    again = apply_pending(warehouse, engine, evaluate_every=0)  # still refused, still on the last good version
    assert "wild" in again.failures and warehouse.current_version("wild") == last_good


def test_vec_init_runs_once_per_unseen_key(warehouse, shipped, monkeypatch):
    """The step reads each component of an initial vector (vec_load): the Python function
    must still see each unseen key once, not once per component."""
    seen = []

    def counting(seed, side, ids, rank, scale):
        seen.append(len(ids))
        return vec_init_arrow(seed, side, ids, rank, scale)

    monkeypatch.setattr(duckdb_engine, "vec_init_arrow", counting)
    batch = shipped.slice(0, 1000)
    ingest_batches(warehouse, batch)
    create_model(warehouse, "cold", DEFAULT_PARAMS)
    engine = get_engine("duckdb")  # registers the counting function
    apply_pending(warehouse, engine, evaluate_every=0)
    engine.close()
    keys = len(pc.unique(batch["user_id"])) + len(pc.unique(batch["item_id"]))
    assert sum(seen) == keys  # a cold start: every key of the batch is unseen


def test_a_vector_component_float_cannot_hold_is_refused():
    """The DuckDB step writes such a component as NULL (vec_axpby_float's TRY_CAST); the
    check before the commit refuses it like a NaN."""
    spec = ModelSpec("m", SGDParams(rank=3))
    rows = pa.table({"side": ["user", "global"], "id": [1, 0], "bias": [0.1, 3.5],
                     "vector": pa.array([[1.0, None, 2.0], None], pa.list_(pa.float32()))})
    with pytest.raises(NumericalFaultError, match="non-finite factors"):
        check_step_rows(rows, spec, 4)
    check_step_rows(rows.slice(1), spec, 4)  # the global row's NULL vector is fine


def test_stored_vectors_of_the_wrong_rank_are_refused(warehouse, shipped, engine):
    ingest_batches(warehouse, shipped.slice(0, 1000))
    create_model(warehouse, "r4", SGDParams(rank=4))
    wrong = empty_model(6)
    wrong.user_ids = np.array([1]); wrong.user_bias = np.zeros(1); wrong.user_factors = np.ones((1, 6))
    wrong.user_counts = np.ones(1, np.int64)
    warehouse.commit_factor_version("r4", factor_rows_from_model("r4", wrong, 1), seq=None)
    report = apply_pending(warehouse, engine, evaluate_every=0)
    assert "rank is 4" in report.failures["r4"]
    assert warehouse.applied_seq("r4") == 0 and warehouse.current_version("r4") == 1


def test_prequential_scores_use_the_factors_before_the_batch(warehouse, shipped, engine):
    ingest_batches(warehouse, shipped.slice(0, 2000))
    create_model(warehouse, "p", DEFAULT_PARAMS)
    report = apply_pending(warehouse, engine, evaluate_every=0)
    # Batch 1 cannot be scored (no model yet); batch 2 is scored with version 1.
    assert report.applied[0].prequential_rmse is None
    second = shipped.slice(1000, 1000)
    v1 = to_factor_model(model_state(warehouse, "p", version=1))
    expected = v1.predict(second["user_id"].to_numpy(), second["item_id"].to_numpy(), clip=(0.5, 5.0))
    y = second["rating"].to_numpy()
    assert report.applied[1].prequential_rmse == pytest.approx(np.sqrt(np.mean((y - expected) ** 2)), abs=1e-6)


def test_prequential_scores_equal_scoring_the_model_before_the_batch(warehouse, shipped, engine):
    """The step's prequential predictions (rating_errors) follow score_ratings.sql exactly:
    known keys, keys tombstoned by a rollback and keys never seen all get the same prediction
    as scoring the batch with the model before it."""
    from als_core.pipeline.models import model_specs
    from als_core.store.versions import rollback

    ingest_batches(warehouse, shipped.slice(0, 3000))
    create_model(warehouse, "p", DEFAULT_PARAMS)
    apply_pending(warehouse, engine, evaluate_every=0)
    rollback(warehouse, "p", 1)  # keys first seen in batches 2 and 3 become tombstones
    batch = shipped.slice(1000, 2000)
    new = batch.slice(0, 5).set_column(0, "user_id", pa.array([10**12 + k for k in range(5)], pa.int64()))
    batch = pa.concat_tables([batch, new.cast(batch.schema)])
    state = model_state(warehouse, "p")
    known_users = set(state.filter(pc.equal(state["side"], "user"))["id"].to_pylist())
    users = batch["user_id"].to_pylist()[:2000]
    assert any(u in known_users for u in users) and any(u not in known_users for u in users)  # tombstones too

    spec = next(s for s in model_specs(warehouse) if s.model_id == "p")
    step = engine.step(warehouse, spec, batch, warehouse.current_version("p") + 1, 99, (0.5, 5.0))
    scored = engine.score(warehouse, "p", batch, None, (0.5, 5.0)).sort_by("rating_seq")
    got = step.prequential.sort_by("rating_seq")
    assert got["rating_seq"].to_pylist() == scored["rating_seq"].to_pylist() == list(range(batch.num_rows))
    assert np.abs(got["prediction"].to_numpy() - scored["prediction"].to_numpy()).max() <= 1e-12


def test_a_step_gives_the_same_bits_in_every_run(warehouse, shipped):
    """Parallel GROUP BYs add terms in a different order each run; exact_sum makes the sums,
    and so the stored biases and vectors, identical (without it: 29 of 29 repeats differed)."""
    from als_core.pipeline.models import model_specs

    ingest_batches(warehouse, shipped.slice(0, 1000))
    create_model(warehouse, "d", DEFAULT_PARAMS)
    apply_pending(warehouse, get_engine("duckdb"), evaluate_every=0)
    spec = next(s for s in model_specs(warehouse) if s.model_id == "d")
    batch = shipped.slice(1000, 60_000)
    runs = []
    for _ in range(4):
        engine = get_engine("duckdb", threads=2)
        step = engine.step(warehouse, spec, batch, 2, 2, (0.5, 5.0))
        runs.append((step.rows.sort_by([("side", "ascending"), ("id", "ascending")]), step.prequential))
        engine.close()
    assert runs[0][0].num_rows > 5_000
    for rows, prequential in runs[1:]:
        assert rows.equals(runs[0][0])
        assert prequential.equals(runs[0][1])


def test_the_engine_passes_only_the_relations_the_sql_files_read():
    """Relations reach DuckDB as Python variables of `_statement`: an unknown name is refused
    before the query runs, and a missing one makes DuckDB refuse the query."""
    import duckdb

    from als_core.engines.duckdb_engine import DuckDBEngine

    engine = DuckDBEngine()
    try:
        one = pa.table({"x": [1, 2, 3]})
        assert engine._run_query({"batch_ratings": one}, "SELECT SUM(x) AS s FROM batch_ratings")["s"].to_pylist() == [6]
        with pytest.raises(ValueError, match="no relation named"):
            engine._run_query({"ratings": one}, "SELECT * FROM ratings")
        with pytest.raises(duckdb.Error, match="score_params"):
            engine._run_query({"batch_ratings": one}, "SELECT * FROM batch_ratings, score_params")
    finally:
        engine.close()


def test_prepared_queries_read_each_runs_relations_and_follow_schema_changes():
    """A prepared query reads the relations of its own run (the slots hold new tables each
    time, the statement is prepared once), a relation with another schema gets a cursor,
    slots and statement of its own, and the slots do not keep a run's tables afterwards."""
    from als_core.engines.duckdb_engine import DuckDBEngine, PreparedQueries

    engine = DuckDBEngine()
    try:
        total = "SELECT SUM(x) AS s, COUNT(*) AS n FROM batch_ratings"

        def run(x, type=pa.int64()):
            out = engine._run_prepared({"batch_ratings": pa.table({"x": pa.array(x, type)})}, total)
            return out["s"][0].as_py(), out["n"][0].as_py()

        assert run([1, 2]) == (3, 2)
        prepared = engine._local.prepared
        (first,) = prepared.sets.values()
        assert run([3, 4, 5]) == (12, 3)  # same schema: same statement, new rows
        assert run([]) == (None, 0)
        assert list(prepared.sets.values()) == [first] and list(first.statements.values()) == ["prepared_0"]
        assert first.slots["batch_ratings"].table.num_rows == 0  # released after the run
        assert run([1.5, 2.0], pa.float64()) == (3.5, 2)  # another schema: prepared anew, beside the first
        assert len(prepared.sets) == 2
        assert run([6]) == (6, 1) and list(first.statements.values()) == ["prepared_0"]
        assert engine._run_prepared({"batch_ratings": pa.table({"x": [7]})}, "SELECT MAX(x) AS m FROM batch_ratings")["m"].to_pylist() == [7]
        assert list(first.statements.values()) == ["prepared_0", "prepared_1"]
        for k in range(PreparedQueries.MAX_SETS + 2):  # new schemas push out the oldest sets
            engine._run_prepared({"batch_ratings": pa.table({f"c{k}": [k]})}, f"SELECT c{k} FROM batch_ratings")
        assert len(prepared.sets) == PreparedQueries.MAX_SETS and first not in prepared.sets.values()
        with pytest.raises(ValueError, match="no relation named"):
            engine._run_prepared({"ratings": pa.table({"x": [1]})}, "SELECT * FROM ratings")
    finally:
        engine.close()


def test_prepared_steps_equal_steps_planned_afresh(warehouse, shipped):
    """Every step runs prepared once (`PreparedQueries`), and DuckDB plans the slots as
    one-row inputs whatever they hold: batches from 300 to 20,000 ratings, with holdout
    scores in between (another prepared set), must give exactly what the query planned
    afresh for each batch gives. The cached read passes one row per key as latest_factors
    (the latest-row join skipped); the store's reader (no cache) passes every stored row of
    the keys through that join: same results."""
    from als_core.engines.duckdb_engine import DuckDBEngine
    from als_core.pipeline.models import model_specs

    ingest_batches(warehouse, shipped.slice(0, 1000))
    create_model(warehouse, "p", DEFAULT_PARAMS)
    apply_pending(warehouse, get_engine("duckdb"), evaluate_every=0)
    ingest_batches(warehouse, shipped.slice(96_000, 1000))  # a second version: many keys stored twice
    apply_pending(warehouse, get_engine("duckdb"), evaluate_every=0, compact_every=0)
    spec = next(s for s in model_specs(warehouse) if s.model_id == "p")
    prepared, afresh, uncached = DuckDBEngine(), DuckDBEngine(prepared=False), DuckDBEngine(cache_bytes=0)
    key = [("side", "ascending"), ("id", "ascending")]
    holdout = shipped.slice(90_000, 5_000)
    try:
        for start, size in ((1000, 1000), (2000, 300), (2300, 20_000), (22_300, 1500), (23_800, 5000)):
            batch = shipped.slice(start, size)
            got, *wanted = (engine.step(warehouse, spec, batch, 3, 3, (0.5, 5.0)) for engine in (prepared, afresh, uncached))
            assert got.rows.num_rows > 100
            for want in wanted:
                assert got.rows.sort_by(key).equals(want.rows.sort_by(key))
                assert got.prequential.equals(want.prequential)
            scored, *wanted = (engine.score(warehouse, "p", holdout, None, (0.5, 5.0)) for engine in (prepared, afresh, uncached))
            assert scored.num_rows == holdout.num_rows
            for want in wanted:
                assert scored.sort_by("rating_seq").equals(want.sort_by("rating_seq"))
        sets = list(prepared._local.prepared.sets.values())
        assert sorted(len(s.statements) for s in sets) == [1, 1]  # step and score, each prepared once
        assert all("latest_factors" in s.slots for s in sets)
        assert all("stored_factors" in s.slots for s in uncached._local.prepared.sets.values())
    finally:
        for engine in (prepared, afresh, uncached):
            engine.close()


def test_split_rows_and_scores_sorts_whole_batches_and_filters_mixed_ones():
    """The step's result comes in batches; rows (no rating_seq) and scores must come apart
    exactly as a filter of the whole result would part them, whatever the batches hold."""
    from als_core.engines.base import PREQUENTIAL_COLUMNS
    from als_core.engines.duckdb_engine import ROW_COLUMNS, split_rows_and_scores

    schema = pa.schema([("model_id", pa.string()), ("version", pa.int64()), ("side", pa.string()), ("id", pa.int64()),
                        ("n", pa.int64()), ("bias", pa.float64()), ("vector", pa.list_(pa.float32())),
                        ("batch_seq", pa.int64()), ("rating_seq", pa.int64()), ("rating", pa.float64()),
                        ("prediction", pa.float64())])

    def part(n_rows, seqs):
        return pa.table({
            "model_id": ["m"] * n_rows + [None] * len(seqs), "version": [2] * n_rows + [None] * len(seqs),
            "side": ["user"] * n_rows + [None] * len(seqs), "id": list(range(n_rows)) + [None] * len(seqs),
            "n": [1] * n_rows + [None] * len(seqs), "bias": [0.5] * n_rows + [None] * len(seqs),
            "vector": [[1.0, 2.0]] * n_rows + [None] * len(seqs), "batch_seq": [3] * n_rows + [None] * len(seqs),
            "rating_seq": [None] * n_rows + seqs, "rating": [None] * n_rows + [4.0] * len(seqs),
            "prediction": [None] * n_rows + [3.5] * len(seqs)}, schema=schema).to_batches()[0]

    batches = [part(3, []), part(2, [0, 1]), part(0, [2, 3, 4]), part(1, [])]
    result = pa.Table.from_batches(batches)
    rows, scores = split_rows_and_scores(result)
    is_row = result["rating_seq"].is_null()
    assert rows.equals(result.filter(is_row).select(ROW_COLUMNS))
    assert scores.equals(result.filter(pc.invert(is_row)).select(PREQUENTIAL_COLUMNS))
    assert rows.num_rows == 6 and scores["rating_seq"].to_pylist() == [0, 1, 2, 3, 4]
    empty_rows, empty_scores = split_rows_and_scores(result.slice(0, 0))
    assert empty_rows.column_names == ROW_COLUMNS and empty_scores.num_rows == 0
