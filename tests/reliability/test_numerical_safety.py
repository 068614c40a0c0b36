"""Numerical safety (issue 7.4): a diverging γ, a batch of extreme ratings, a rank mismatch
between a model and its stored vectors. Each is refused before anything is committed, with a
clear message; the model stays on its last good version and the failure is in models.note.
(tests/engines/test_duckdb_engine.py has the basic diverging-γ and wrong-rank-vector cases;
these add the CLI, the neighbours, the extreme-rating batch and the changed-rank model.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from als_core.als import fit_als
from als_core.cli import app
from als_core.datasets import write_ratings
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_file, ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, bootstrap_model, create_model
from als_core.sgd import SGDParams
from als_core.store.versions import model_state
from als_core.store.warehouse import StoreError

WILD = SGDParams(rank=8, gamma=3.0, lambda_=0.0, aggregation="sum", bias_update="sgd")  # diverges at batch 7


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def ingest_batches(warehouse, shipped, n, start=0, size=500):
    for k in range(start, start + n):
        ingest_table(warehouse, shipped.slice(k * size, size), source=f"b{k}", holdout=False)


def factors_version(warehouse) -> int:
    return DeltaTable(warehouse.table_uri("factors")).version()


def sorted_state(warehouse, model_id):
    return model_state(warehouse, model_id).sort_by([("side", "ascending"), ("id", "ascending")])


def assert_all_factors_finite(warehouse) -> None:
    rows = warehouse.read("factors")
    bias = rows["bias"].drop_null().to_numpy()
    values = pc.list_flatten(rows["vector"].drop_null()).to_numpy(zero_copy_only=False)
    assert np.isfinite(bias).all() and np.isfinite(values).all()


def test_a_diverging_gamma_is_refused_through_the_cli_and_other_models_keep_learning(warehouse, shipped):
    ingest_batches(warehouse, shipped, 8)
    create_model(warehouse, "wild", WILD)
    create_model(warehouse, "calm", DEFAULT_PARAMS)
    result = cli("step", "-w", warehouse.uri, "--evaluate-every", "0")
    assert result.exit_code == 1
    assert "refused" in result.output and "'wild'" in result.output and "non-finite" in result.output
    wild = warehouse.current_version("wild")
    assert 1 <= wild < 8 and warehouse.applied_seq("wild") == wild  # stopped on its last good version
    assert warehouse.current_version("calm") == 8  # the neighbour was not held back
    assert "non-finite" in warehouse.model_record("wild")["note"]
    assert not warehouse.model_record("calm")["note"]
    assert_all_factors_finite(warehouse)  # nothing non-finite ever reached the store
    # A rerun refuses again and commits nothing to factors.
    before, state = factors_version(warehouse), sorted_state(warehouse, "wild")
    again = cli("step", "-w", warehouse.uri, "--evaluate-every", "0")
    assert again.exit_code == 1 and "refused" in again.output
    assert factors_version(warehouse) == before and sorted_state(warehouse, "wild").equals(state)
    assert "wild" in cli("models", "list", "-w", warehouse.uri).output


def test_a_batch_of_extreme_ratings_ingested_with_a_widened_scale_is_refused(warehouse, shipped, tmp_path,
                                                                           duckdb_engine):
    """Ratings at 1e6 pass ingestion when the scale is widened on purpose, but the models
    predict on [0.5, 5]: learning them would leave finite factors near 1e38 (measured without
    this protection), so the step refuses the batch before it runs."""
    ingest_batches(warehouse, shipped, 3)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    assert not apply_pending(warehouse, duckdb_engine, evaluate_every=0).failures
    state, before = sorted_state(warehouse, "m"), factors_version(warehouse)
    extreme = shipped.slice(2000, 500)
    extreme = extreme.set_column(2, "rating", pa.array(np.full(500, 1e6)))
    outcome = ingest_file(warehouse, write_ratings(extreme, tmp_path / "extreme.csv"), scale=(0.5, 1e6),
                          holdout_fraction=0.0)
    assert outcome.n_rows == 500  # ingestion accepted them: the operator widened the scale
    report = apply_pending(warehouse, duckdb_engine, evaluate_every=0)
    message = report.failures["m"]
    assert "batch 4" in message and "500 of 500 ratings are outside the scale [0.5, 5]" in message
    assert "refused, no version written" in message
    assert warehouse.current_version("m") == 3 and warehouse.applied_seq("m") == 3
    assert factors_version(warehouse) == before and sorted_state(warehouse, "m").equals(state)
    assert "outside the scale" in warehouse.model_record("m")["note"]
    result = cli("step", "-w", warehouse.uri, "--evaluate-every", "0")  # the CLI says so too
    assert result.exit_code == 1 and "outside the scale" in result.output


def test_non_finite_ratings_handed_to_ingest_table_are_refused_at_the_step(warehouse, shipped, duckdb_engine):
    """ingest_table (the Python API) trusts its caller; a NaN rating that slips in is refused
    by the step with a message naming the cause, not a guess about γ."""
    create_model(warehouse, "m", DEFAULT_PARAMS)
    batch = shipped.slice(0, 100)
    ratings = batch["rating"].to_numpy().copy()
    ratings[5] = np.nan
    ingest_table(warehouse, batch.set_column(2, "rating", pa.array(ratings)), source="nan", holdout=False)
    report = apply_pending(warehouse, duckdb_engine, evaluate_every=0)
    assert "1 of 100 ratings are outside the scale" in report.failures["m"]
    assert warehouse.current_version("m") == 0


def test_a_model_whose_rank_no_longer_matches_its_stored_vectors_is_refused(warehouse, shipped, duckdb_engine):
    ingest_batches(warehouse, shipped, 2)
    create_model(warehouse, "r4", SGDParams(rank=4))
    assert not apply_pending(warehouse, duckdb_engine, evaluate_every=0).failures
    ingest_batches(warehouse, shipped, 1, start=2)
    warehouse.upsert_models([{"model_id": "r4", "rank": 6}])  # e.g. an operator edits the model row
    state, before = sorted_state(warehouse, "r4"), factors_version(warehouse)
    report = apply_pending(warehouse, duckdb_engine, evaluate_every=0)
    assert "stored vectors have length 4 but the model's rank is 6" in report.failures["r4"]
    assert warehouse.current_version("r4") == 2 and warehouse.applied_seq("r4") == 2
    assert factors_version(warehouse) == before and sorted_state(warehouse, "r4").equals(state)
    assert "rank is 6" in warehouse.model_record("r4")["note"]


def test_a_bootstrap_of_the_wrong_rank_is_refused_before_commit(warehouse, shipped):
    ingest_batches(warehouse, shipped, 1)
    create_model(warehouse, "r4", SGDParams(rank=4))
    head = shipped.slice(0, 500)
    als = fit_als(head["user_id"].to_numpy(), head["item_id"].to_numpy(), head["rating"].to_numpy(), rank=6,
                  iterations=2)
    with pytest.raises(StoreError, match="rank 4.*rank 6"):
        bootstrap_model(warehouse, "r4", als, through_seq=1)
    assert warehouse.current_version("r4") == 0 and warehouse.read("factors").num_rows == 0
