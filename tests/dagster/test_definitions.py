"""The code location loads (as `dagster definitions validate` and `dagster dev` load it), with
the assets, sensors, schedules, pools and env-var defaults the docs promise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]
ASSETS = {"rating_batches", "hyperparameter_grid", "factor_versions", "model_evaluations", "grid_pruning",
          "batch_als_baseline", "rmse_curve", "factor_compaction"}


def test_dagster_definitions_validate_passes(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_project" / "dagster.yaml", home / "dagster.yaml")
    dagster = Path(sys.executable).with_name("dagster")
    env = {**os.environ, "DAGSTER_HOME": str(home), "STREAMING_ALS_WAREHOUSE": str(tmp_path / "wh"),
           "STREAMING_ALS_LANDING": str(tmp_path / "landing")}
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All code locations passed validation" in done.stdout + done.stderr
    assert not (tmp_path / "wh").exists()  # loading the code touches no store


def test_definitions_graph_pools_and_automation():
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    for writer in ("factor_versions", "grid_pruning", "hyperparameter_grid", "batch_als_baseline", "factor_compaction"):
        assert pools[writer] == {"streaming_als_factors"}, writer
    assert pools["rating_batches"] == {"streaming_als_ingest"}
    auto = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert auto == {"hyperparameter_grid", "factor_versions", "model_evaluations", "grid_pruning", "rmse_curve"}
    deps = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert deps["factor_versions"] == {"rating_batches", "hyperparameter_grid"}
    assert deps["grid_pruning"] == {"hyperparameter_grid", "model_evaluations"}
    assert {s.name for s in defs.sensors} == {"new_rating_files", "streaming_als_automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert {s.name: s.cron_schedule for s in defs.schedules} == {
        "factor_compaction_schedule": "0 3 * * *", "batch_als_baseline_schedule": "0 4 * * *"}


def test_resources_from_environment(monkeypatch, tmp_path):
    from dagster_project.resources import default_resources, grid_fingerprint, grid_from_env

    monkeypatch.setenv("STREAMING_ALS_WAREHOUSE", str(tmp_path / "wh"))
    monkeypatch.setenv("STREAMING_ALS_LANDING", "relative-landing")
    monkeypatch.setenv("STREAMING_ALS_ENGINE", "spark")
    monkeypatch.setenv("STREAMING_ALS_SPARK_MASTER", "spark://cluster:7077")
    monkeypatch.setenv("STREAMING_ALS_GRID", '{"ranks": [3], "gammas": [0.1], "prune_every": 4}')
    monkeypatch.setenv("STREAMING_ALS_MOVE_PROCESSED", "0")
    resources = default_resources()
    assert resources["store"].warehouse_uri == str(tmp_path / "wh")
    assert resources["landing"].path == os.path.abspath("relative-landing")
    assert resources["landing"].move_processed is False
    assert (resources["engine"].name, resources["engine"].spark_master) == ("spark", "spark://cluster:7077")
    assert resources["grid"].model_ids() == ["r3_l0.05_g0.1", "r3_l0.1_g0.1"]
    assert resources["grid"].prune_every == 4
    before = grid_fingerprint(grid_from_env())
    monkeypatch.setenv("STREAMING_ALS_GRID", '{"ranks": [3, 6]}')
    assert grid_fingerprint(grid_from_env()) != before
