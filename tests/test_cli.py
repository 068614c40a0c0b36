"""The console script, run in-process with typer's CliRunner against real stores."""

from __future__ import annotations


import pytest
from typer.testing import CliRunner

from als_core.cli import app, parse_interval
from als_core.datasets import write_ratings

runner = CliRunner()


def run(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def batch_files(tmp_path, shipped):
    files = []
    for k in range(3):
        files.append(write_ratings(shipped.slice(k * 1000, 1000), tmp_path / f"batch {k}.csv"))
    return files


def test_ingest_step_versions_predict_recommend_sql_rollback(tmp_path, batch_files):
    wh = tmp_path / "wh"
    run("models", "create", "m1", "-w", wh)
    out = run("ingest", *batch_files, "-w", wh, "--holdout", "0.1").output
    assert "batch 1" in out and "batch 3" in out
    assert "already ingested" in run("ingest", batch_files[0], "-w", wh).output
    out = run("step", "-w", wh).output
    assert out.count("m1") >= 3
    assert "nothing pending" in run("step", "-w", wh).output
    versions = run("versions", "-w", wh).output
    assert "versions of m1" in versions and "3000" not in versions.split("\n")[0]
    value = float(run("predict", 1, 1, "-w", wh).output.split()[0])
    assert 0.5 <= value <= 5.0
    assert "cold-start rule" in run("predict", 987654, 1, "-w", wh).output
    rec = run("recommend", 987654, "-n", 3, "-w", wh).output
    assert "cold start" in rec
    assert "3" in run("sql", "SELECT count(*) AS versions FROM model_versions", "-w", wh).output
    assert "version 4 restores version 1" in run("rollback", "m1", 1, "-w", wh).output
    assert "full compaction (whole model)" in run("compact", "-w", wh).output
    assert "nothing to compact" in run("compact", "-w", wh).output
    assert "full compaction" in run("compact", "--full", "-w", wh).output
    old = run("sql", "SELECT count(*) FROM current_factors('m1', as_of := 1)", "-w", wh, ok=False)
    assert old.exit_code == 1 and "older than its last compaction" in old.output and "Traceback" not in old.output


def test_ingest_reports_rejects_and_refuses_unreadable_files(tmp_path):
    wh = tmp_path / "wh"
    partly = tmp_path / "partly bad.csv"
    partly.write_text("user_id,item_id,rating\n1,1,4.0\n2,2,nan\n")
    out = run("ingest", partly, "-w", wh).output
    assert "1 rows rejected" in out
    broken = tmp_path / "broken.csv"
    broken.write_text("a,b,c\n1,2,3\n")
    result = run("ingest", broken, "-w", wh, ok=False)
    assert result.exit_code == 1 and "broken.csv" in result.output and "nothing committed" in result.output


def test_replay_drops_complete_files_into_a_landing_folder(tmp_path, shipped):
    source = write_ratings(shipped.slice(0, 2500), tmp_path / "stream.csv")
    landing = tmp_path / "landing"
    run("replay", source, "--batch-size", 1000, "--to", landing)
    names = sorted(p.name for p in landing.iterdir())
    assert names == ["stream-batch-000001.csv", "stream-batch-000002.csv", "stream-batch-000003.csv"]


def test_replay_applies_batches_directly(tmp_path, shipped):
    source = write_ratings(shipped.slice(0, 3000), tmp_path / "stream.csv")
    wh = tmp_path / "wh"
    run("models", "create", "m1", "-w", wh)
    run("replay", source, "--batch-size", 1000, "--limit", 2, "-w", wh)
    assert "2" in run("sql", "SELECT max(version) FROM model_versions", "-w", wh).output


def test_train_batch_writes_a_model_version(tmp_path, shipped):
    source = write_ratings(shipped.slice(0, 5000), tmp_path / "train.csv")
    out = run("train-batch", source, "--model", "als", "-w", tmp_path / "wh").output
    assert "training RMSE" in out and "wrote als version 1" in out
    assert "versions of als" in run("versions", "-m", "als", "-w", tmp_path / "wh").output


def test_evaluate_prints_the_rmse_table():
    out = run("evaluate").output
    assert "batch ALS" in out and "damped bias baseline" in out and "streaming SGD reference" in out


def test_demo_on_a_small_file(tmp_path, shipped):
    data = write_ratings(shipped.slice(0, 6000), tmp_path / "small.csv")
    out = run("demo", "--data", data, "--out", tmp_path / "demo").output
    assert "streaming, final version" in out and "batch ALS" in out
    assert (tmp_path / "demo" / "rmse_curve.png").stat().st_size > 10_000


def test_errors_are_one_clear_line(tmp_path):
    result = run("predict", 1, 1, "-w", tmp_path / "empty", ok=False)
    assert result.exit_code == 1 and "no models" in result.output


def test_parse_interval():
    assert parse_interval("5s") == 5 and parse_interval("500ms") == 0.5 and parse_interval("2m") == 120
    with pytest.raises(ValueError):
        parse_interval("soon")
