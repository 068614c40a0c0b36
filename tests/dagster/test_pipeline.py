"""End to end through real Dagster: landed files -> sensor -> rating_batches -> factor_versions
-> model_evaluations -> grid_pruning, on real Delta tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from als_core.pipeline.grid_models import recent_prequential_rmse
from dagster_project.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def test_five_files_flow_exactly_once_and_pruning_keeps_the_best(pipeline):
    # The grid first (in production the automation sensor does this on its first tick).
    assert pipeline.materialize("hyperparameter_grid").success
    wh = pipeline.warehouse
    grid_ids = sorted(wh.models()["model_id"].to_pylist())
    assert len(grid_ids) == 4 and set(wh.models()["status"].to_pylist()) == {"active"}

    # 5 micro-batches of 1,000 ratings land; one tick requests one run per file.
    files = [pipeline.drop(k) for k in range(1, 6)]
    result = pipeline.tick()
    assert [r.partition_key for r in result.run_requests] == [f.name for f in files]
    assert len({r.run_key for r in result.run_requests}) == 5
    assert set(pipeline.instance.get_dynamic_partitions("rating_files")) == {f.name for f in files}
    assert all(r.tags["streaming_als/batch_id"] for r in result.run_requests)

    # Each run ingests its file and applies it to every active model (the daemon's part).
    assert all([k.to_user_string() for k in r.asset_selection] == ["rating_batches", "factor_versions"]
               for r in result.run_requests)
    runs = {r.partition_key: r for r in result.run_requests}

    def meta(out, key):
        return next(e.materialization.metadata for e in out.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == key)

    for name in ("batch-001.csv", "batch-002.csv"):
        out = pipeline.execute(runs[name])
        assert out.success
        assert meta(out, "rating_batches")["dagster/row_count"].value == 1000 - meta(out, "rating_batches")["rejected_rows"].value
        assert meta(out, "factor_versions")["versions_written"].value == 4
    assert pipeline.versions_per_model() == {m: 2 for m in grid_ids}

    # Then the automation's run: evaluations and pruning round 1 (at batch 2): successive
    # halving keeps the best 2 on recent prequential RMSE, the best becomes champion.
    out = pipeline.materialize("model_evaluations", "grid_pruning")
    assert out.success
    models = {m["model_id"]: m for m in wh.models().to_pylist()}
    scores = recent_prequential_rmse(wh, grid_ids, 1, 2)
    ranked = sorted(grid_ids, key=lambda m: (scores[m], m))
    assert models[ranked[0]]["status"] == "champion"
    assert models[ranked[1]]["status"] == "active"
    assert {models[m]["status"] for m in ranked[2:]} == {"pruned"}
    assert all("[round 1 @ batch 2] pruned: prequential RMSE" in models[m]["note"] for m in ranked[2:])
    assert set(meta(out, "grid_pruning")["pruned"].value.split(", ")) == set(ranked[2:])
    assert "successive halving" in meta(out, "grid_pruning")["decisions"].value

    # Batches 3-5: pruned models stop learning but stay queryable; live ones reach 5 versions.
    written = 0
    for name in ("batch-003.csv", "batch-004.csv", "batch-005.csv"):
        out = pipeline.execute(runs[name])
        assert out.success
        written += meta(out, "factor_versions")["versions_written"].value
    assert written == 2 * 3
    assert {c.check_name: c.passed for c in out.get_asset_check_evaluations()} == {"models_caught_up": True}
    out = pipeline.materialize("model_evaluations", "grid_pruning", "rmse_curve")
    assert out.success
    counts = pipeline.versions_per_model()
    assert {counts[m] for m in ranked[:2]} == {5} and {counts[m] for m in ranked[2:]} == {2}
    assert wh.ledger()["seq"].to_pylist() == [1, 2, 3, 4, 5]
    # Round 2 at batch 4 keeps min_keep = 2 models: nobody else is pruned.
    statuses = {m["model_id"]: m["status"] for m in wh.models().to_pylist()}
    assert sum(s in ("active", "champion") for s in statuses.values()) == pipeline.resources["grid"].min_keep
    assert list(statuses.values()).count("champion") == 1
    assert meta(out, "grid_pruning")["rounds_run"].value == 1

    # Evaluations: holdout for every version, prequential for every version but the cold first.
    evals = wh.read("evaluations").to_pylist()
    for m in ranked[:2]:
        holdout = {e["version"] for e in evals if e["model_id"] == m and e["kind"] == "holdout"}
        preq = {e["version"] for e in evals if e["model_id"] == m and e["kind"] == "prequential"}
        assert holdout == {1, 2, 3, 4, 5} and {2, 3, 4, 5} <= preq
    assert meta(out, "rmse_curve")["plot"].value.startswith("![")
    assert (pipeline.landing / "processed" / "batch-005.csv").is_file()
    assert {c.check_name: c.passed for c in out.get_asset_check_evaluations()} == {"evaluations_finite": True}

    # The same content again: the sensor asks for nothing, ingest and apply are no-ops.
    before = pipeline.delta_versions()
    shutil.copy(pipeline.landing / "processed" / "batch-001.csv", pipeline.landing / "again.csv")
    pipeline.drop(2)  # same name and content as an ingested file
    assert pipeline.tick().run_requests == []
    assert pipeline.tick(cursor=None).run_requests == []  # a reset cursor: the ledger still knows
    out = pipeline.ingest("again.csv")  # a manual run of the duplicate
    meta = out.get_asset_materialization_events()[0].materialization.metadata
    assert meta["already_ingested"].value is True and meta["batch_seq"].value == 1
    assert pipeline.ingest("batch-003.csv").success  # rerun of an ingested partition (file in processed/)
    assert pipeline.materialize("factor_versions").success
    assert pipeline.versions_per_model() == counts
    after = pipeline.delta_versions()
    assert {t: after[t] for t in ("ratings", "batches", "factors", "rejected_ratings")} == \
           {t: before[t] for t in ("ratings", "batches", "factors", "rejected_ratings")}


def test_bad_file_fails_the_run_moves_to_rejected_and_commits_nothing(pipeline):
    pipeline.use_grid(ranks=[4], gammas=[0.05])
    assert pipeline.materialize("hyperparameter_grid").success
    pipeline.drop(1)
    assert all(o.success for o in pipeline.run_requests(pipeline.tick()))
    before = pipeline.delta_versions()
    (pipeline.landing / "broken.csv").write_bytes(b"user_id,item_id,rating\n1,2,\x00\x00\xff\xfe garbage\n")
    result = pipeline.tick()
    assert [r.partition_key for r in result.run_requests] == ["broken.csv"]
    [out] = pipeline.run_requests(result, raise_on_error=False)
    assert not out.success
    failure = next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("rejected broken.csv:") and "Nothing was committed" in message
    assert not (pipeline.landing / "broken.csv").exists()
    assert (pipeline.landing / "rejected" / "broken.csv").is_file()
    assert "binary" in (pipeline.landing / "rejected" / "broken.csv.reason.txt").read_text().lower()
    assert pipeline.delta_versions() == before
    # The stream goes on: the next file is ingested and applied as batch 2.
    pipeline.drop(2)
    assert all(o.success for o in pipeline.run_requests(pipeline.tick()))
    assert pipeline.materialize("factor_versions").success
    assert set(pipeline.versions_per_model().values()) == {2}


def test_file_with_some_bad_rows_is_ingested_with_its_rejects(pipeline):
    (pipeline.landing).mkdir(parents=True)
    (pipeline.landing / "mixed.csv").write_text("user_id,item_id,rating\n1,10,4.5\n1,11,nine\n2,10,3.0\n")
    [request] = pipeline.tick().run_requests
    out = pipeline.ingest(request.partition_key)
    meta = out.get_asset_materialization_events()[0].materialization.metadata
    assert meta["rejected_rows"].value == 1 and meta["dagster/row_count"].value == 2
    rejected = pipeline.warehouse.read("rejected_ratings").to_pylist()
    assert [r["reason"] for r in rejected] == ["rating 'nine' is not a number"]


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised inside evaluate_automation_conditions
def test_automation_carries_a_new_batch_through_without_clicks(pipeline):
    """Declarative automation, evaluated tick by tick as the daemon does (its requested runs
    executed in between): a missing grid is created, and an ingested batch then flows through
    factor_versions and, once that run is done, the evaluation chain; then all is quiet."""
    pipeline.use_grid(ranks=[4], gammas=[0.05])
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    cursor = None

    def tick():
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=pipeline.instance, cursor=cursor)
        cursor = result.cursor
        wanted = {k.to_user_string() for k in keys if result.get_num_requested(k)}
        if wanted:
            assert pipeline.materialize(*wanted).success
        return wanted

    assert tick() == {"hyperparameter_grid"}  # missing: created on the first tick
    for _ in range(4):  # the grid's own downstream runs, until quiet
        if not tick():
            break
    assert tick() == set()
    # A file ingested by a run without factor_versions (a manual partition run, or
    # STREAMING_ALS_APPLY_WITH_INGEST=0): the automation applies it, then evaluates.
    pipeline.drop(1)
    [request] = pipeline.tick().run_requests
    assert pipeline.ingest(request.partition_key).success
    assert tick() == {"factor_versions"}
    assert set(pipeline.versions_per_model().values()) == {1}
    assert tick() == {"model_evaluations", "grid_pruning", "rmse_curve"}
    assert tick() == set()
    # The sensor's own runs ingest and apply: the automation only adds the evaluation run.
    pipeline.drop(2)
    assert all(o.success for o in pipeline.run_requests(pipeline.tick()))
    assert set(pipeline.versions_per_model().values()) == {2}
    assert tick() == {"model_evaluations", "grid_pruning", "rmse_curve"}
    assert tick() == set()


def test_concurrent_factor_runs_never_double_apply(pipeline):
    """Two factor_versions runs in two processes at once (what two Dagster runs are): every
    batch is applied once per model, whichever run gets there first."""
    pipeline.use_grid(ranks=[4])
    assert pipeline.materialize("hyperparameter_grid").success
    for k in (1, 2, 3):
        pipeline.drop(k)
    assert all(pipeline.ingest(r.partition_key).success for r in pipeline.tick().run_requests)  # ingest only
    worker = Path(__file__).with_name("factor_worker.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(worker), pipeline.resources["store"].warehouse_uri],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    written = sorted(int(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert sum(written) == 2 * 3  # 2 models x 3 batches, split between the two runs
    wh = pipeline.warehouse
    assert set(pipeline.versions_per_model().values()) == {3}
    factors = wh.read("factors", filter=pc.field("side") == "global", columns=["model_id", "version", "batch_seq"])
    keys = list(zip(*[factors[c].to_pylist() for c in ("model_id", "batch_seq")]))
    assert len(keys) == len(set(keys)) == 2 * 3  # one version per (model, batch), none twice
    assert sorted(set(factors["batch_seq"].to_pylist())) == [1, 2, 3]


def test_batch_baseline_bootstrap_and_compaction(pipeline):
    pipeline.use_grid(ranks=[4], gammas=[0.05])
    assert pipeline.materialize("hyperparameter_grid").success
    for k in (1, 2, 3):
        pipeline.drop(k)
    assert all(o.success for o in pipeline.run_requests(pipeline.tick()))
    config = {"ops": {"batch_als_baseline": {"config": {"rank": 4, "iterations": 5, "bootstrap_model": "als_warm"}}}}
    out = pipeline.materialize("batch_als_baseline", run_config=config)
    assert out.success
    wh = pipeline.warehouse
    [row] = wh.read("evaluations", filter=pc.field("kind") == "batch_baseline").to_pylist()
    assert row["model_id"] == "batch_als" and row["version"] == 3 and 0.5 < row["rmse"] < 1.5
    assert wh.model_record("als_warm")["status"] == "active" and wh.applied_seq("als_warm") == 3
    # The bootstrapped model learns from batch 4 on; its bootstrap version gets a holdout
    # evaluation from model_evaluations; the curve shows the batch line.
    pipeline.drop(4)
    assert all(o.success for o in pipeline.run_requests(pipeline.tick()))
    out = pipeline.materialize("factor_versions", "model_evaluations", "rmse_curve")
    assert out.success
    assert pipeline.versions_per_model() == {"als_warm": 2, "r4_l0.05_g0.05": 4}
    holdout = {(e["model_id"], e["version"]) for e in wh.read("evaluations").to_pylist() if e["kind"] == "holdout"}
    assert {("als_warm", 1), ("als_warm", 2)} <= holdout
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in out.get_asset_materialization_events()}
    assert 0.5 < meta["rmse_curve"]["batch_als_rmse"].value < 1.5
    assert (pipeline.root / "warehouse" / "_artifacts" / "rmse_curve.png").stat().st_size > 10_000
    # Compaction (the schedule's job) rewrites changed models only; versions stay readable.
    ratings_files = len(wh.table("ratings").file_uris())
    out = pipeline.materialize("factor_compaction")
    assert out.get_asset_materialization_events()[0].materialization.metadata["models_compacted"].value == 2
    # ... and merges the append-only tables' small files (one file per ingested batch before).
    assert ratings_files >= 2 and len(wh.table("ratings").file_uris()) == 1
    assert "| ratings |" in out.get_asset_materialization_events()[0].materialization.metadata["small_files_merged"].value
    out = pipeline.materialize("factor_compaction")
    assert out.get_asset_materialization_events()[0].materialization.metadata["models_compacted"].value == 0
    assert pipeline.versions_per_model() == {"als_warm": 2, "r4_l0.05_g0.05": 4}
