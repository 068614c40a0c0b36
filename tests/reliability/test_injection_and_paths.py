"""Injection and paths (issue 7.5): model ids that reach SQL, Delta predicates or partition
folders are validated (``check_model_id``) and, where they reach SQL, bound as parameters;
the landing folder never reads or writes outside itself.

``streaming-als sql`` runs the user's SQL by design (DuckDB in memory over Arrow views of
the Delta tables: it cannot write the store); every other command binds its arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from als_core.cli import app
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.pipeline.replay import drop_file
from als_core.sql_session import sql_session
from als_core.store.versions import compact_factors, rollback
from reliability_helpers import table_versions

EVIL_IDS = ["x'); DROP TABLE factors; --", "m' OR '1'='1", "../m", "m/../../etc", "m; rm -rf /", 'm"', "m\n"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


@pytest.fixture
def served(warehouse, shipped, duckdb_engine):
    """A warehouse with two models that have versions (what an attack would want to damage)."""
    for k in range(2):
        ingest_table(warehouse, shipped.slice(k * 500, 500), source=f"b{k}", holdout=False)
    create_model(warehouse, "m", DEFAULT_PARAMS)
    create_model(warehouse, "other", DEFAULT_PARAMS)
    apply_pending(warehouse, duckdb_engine, evaluate_every=0)
    return warehouse


def snapshot(warehouse):
    return table_versions(warehouse), warehouse.read("factors").num_rows, warehouse.read("models").num_rows


@pytest.mark.parametrize("command", ["predict", "recommend", "versions", "rollback", "compact"])
def test_malicious_model_ids_are_refused_by_every_cli_command(served, command):
    before = snapshot(served)
    for evil in EVIL_IDS:
        if command == "predict":
            result = cli("predict", 1, 1, "-m", evil, "-w", served.uri)
        elif command == "recommend":
            result = cli("recommend", 1, "-m", evil, "-w", served.uri)
        elif command == "rollback":
            result = cli("rollback", evil, 1, "-w", served.uri)
        else:
            result = cli(command, "-m", evil, "-w", served.uri)
        assert result.exit_code == 1, (evil, result.output)
        assert "invalid model id" in result.output, (evil, result.output)
    assert snapshot(served) == before  # nothing written, nothing dropped


def test_malicious_model_ids_are_refused_before_any_store_write(served):
    before = snapshot(served)
    for evil in EVIL_IDS:
        for action in (lambda: compact_factors(served, evil),  # builds a Delta predicate from the id
                       lambda: rollback(served, evil, 1),
                       lambda: create_model(served, evil, DEFAULT_PARAMS),  # becomes a partition folder
                       lambda: served.commit_factor_version(evil, served.factor_rows("m"), seq=None),
                       lambda: served.upsert_models([{"model_id": evil, "status": "pruned"}])):
            with pytest.raises(ValueError, match="invalid model id"):
                action()
    assert snapshot(served) == before
    assert sorted(os.listdir(served.table_uri("factors"))) == ["_delta_log", "model_id=m", "model_id=other"]


def test_serving_binds_the_model_id_even_when_validation_is_bypassed(served, monkeypatch):
    """Defence in depth: with check_model_id skipped (the CLI's model lookup replaced by one
    that returns the raw id), predict and recommend still pass the id as a bound parameter,
    so it is a string that matches no model, not SQL."""
    import als_core.cli as cli_module

    before = snapshot(served)
    monkeypatch.setattr(cli_module, "_default_model", lambda warehouse, model: model)
    unknown = cli("predict", 1, 1, "-m", "no-such-model", "-w", served.uri)
    for evil in EVIL_IDS[:2]:
        for args in (["predict", 1, 1], ["recommend", 1]):
            result = cli(*args, "-m", evil, "-w", served.uri)
            # interpolated, these ids would be a Parser/Binder error (or run the DROP); bound, they are
            # a model name that matches nothing: the same answer as any unknown model
            assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
            assert "Error" not in result.output, result.output
            if args[0] == "predict":
                assert result.output == unknown.output.replace(repr("no-such-model"), repr(evil))
    with sql_session(served) as con:
        nobody = con.execute("SELECT predict(?, ?, ?)", ["no-such-model", 1, 1]).fetchone()[0]
        for evil in EVIL_IDS:
            assert con.execute("SELECT predict(?, ?, ?)", [evil, 1, 1]).fetchone()[0] == nobody
            assert con.execute("SELECT count(*) FROM recommend(?, ?, top_n := ?)", [evil, 1, 5]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM factors").fetchone()[0] == before[1]
    assert snapshot(served) == before


def test_user_and_item_arguments_must_be_integers(served):
    for args in (["predict", "1; DROP TABLE factors", 1], ["predict", 1, "1 OR 1=1"], ["recommend", "1'--"]):
        result = cli(*args, "-w", served.uri)
        assert result.exit_code == 2 and "valid integer" in result.output, result.output


def test_the_sql_command_cannot_change_the_delta_store(served):
    """`streaming-als sql` runs user SQL by design; the session is in-memory DuckDB over Arrow
    views, so even a DROP or DELETE leaves the Delta tables untouched."""
    before = snapshot(served)
    for statement in ("DROP VIEW factors", "DELETE FROM ratings", "CREATE TABLE x AS SELECT 1"):
        cli("sql", statement, "-w", served.uri)  # may fail or succeed inside DuckDB; the store must not change
    assert snapshot(served) == before
    assert DeltaTable(served.table_uri("factors")).to_pyarrow_dataset().count_rows() == before[1]


# ------------------------------------------------------------------------ landing folder: drop_file
BAD_NAMES = ["../escape.csv", "sub/../../escape.csv", "/tmp/absolute.csv", "..", ".", "", ".hidden.csv",
             "a\\b.csv", "nul\0.csv"]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_drop_file_refuses_names_that_are_not_plain_file_names(tmp_path, shipped, name):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / ".tmp-sub").mkdir()  # makes 'sub/../../escape.csv' resolvable: an escape, were it allowed
    before = listing(tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        drop_file(shipped.slice(0, 10), landing, name)
    assert listing(tmp_path) == before
    assert not Path("/tmp/absolute.csv").exists() or name != "/tmp/absolute.csv"


def test_drop_file_never_writes_through_a_planted_temporary_symlink(tmp_path, shipped):
    landing, outside = tmp_path / "landing", tmp_path / "outside.csv"
    landing.mkdir()
    outside.write_text("precious\n")
    (landing / ".tmp-batch.csv").symlink_to(outside)
    path = drop_file(shipped.slice(0, 10), landing, "batch.csv")
    assert path == landing / "batch.csv" and path.is_file() and not path.is_symlink()
    assert outside.read_text() == "precious\n"


# ------------------------------------------------------------------------ landing folder: the sensor side
def _landing_module():
    try:
        from dagster_project import landing
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"dagster_project.landing not importable: {exc}")
    return landing


@pytest.fixture
def landing_root(tmp_path):
    root = tmp_path / "landing"
    root.mkdir()
    (tmp_path / "secret.csv").write_text("user_id,item_id,rating\n1,1,4\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "good.csv").write_text("user_id,item_id,rating\n1,1,4\n")
    (root / "link-out.csv").symlink_to(tmp_path / "secret.csv")  # leads outside: never a candidate
    (root / "link-in.csv").symlink_to(root / "good.csv")  # stays inside: fine
    (root / "dir-link.csv").symlink_to(tmp_path / "elsewhere")
    (root / ".hidden.csv").write_text("x")
    (root / "partial.csv.part").write_text("x")
    (root / "processed").mkdir()
    return root


def test_the_landing_scan_only_sees_regular_files_inside_the_folder(landing_root):
    landing = _landing_module()
    assert sorted(f.name for f in landing.scan(landing_root)) == ["good.csv", "link-in.csv"]


@pytest.mark.parametrize("name", ["../secret.csv", "sub/../../secret.csv", "/etc/passwd", "..", ".", "", "a/b.csv",
                                  ".hidden.csv", "x.tmp"])
def test_landing_paths_refuse_escaping_names(landing_root, name):
    landing = _landing_module()
    with pytest.raises(landing.UnsafePathError):
        landing.child(landing_root, name)


def test_landing_moves_stay_inside_the_folder(landing_root, tmp_path):
    landing = _landing_module()
    for subdir in ("..", "../elsewhere", "a/b", ".hidden", ""):
        with pytest.raises(landing.UnsafePathError):
            landing.move_into(landing_root, landing_root / "good.csv", subdir)
    with pytest.raises(landing.UnsafePathError):  # a file that is not directly in the landing folder
        landing.move_into(landing_root, tmp_path / "secret.csv", "processed")
    (landing_root / "rejected").symlink_to(tmp_path / "elsewhere")  # a destination folder leading outside
    with pytest.raises(landing.UnsafePathError):
        landing.move_into(landing_root, landing_root / "good.csv", "rejected")
    assert (landing_root / "good.csv").is_file() and not any((tmp_path / "elsewhere").iterdir())
    moved = landing.move_into(landing_root, landing_root / "link-out.csv", "processed")  # moves the link only
    assert moved.is_symlink() and (tmp_path / "secret.csv").read_text().startswith("user_id")


def test_the_sensor_never_requests_a_file_outside_the_landing_folder(landing_root, tmp_path):
    _landing_module()
    try:
        import dagster as dg

        from dagster_project.resources import LandingResource, StoreResource
        from dagster_project.sensors import new_rating_files
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"dagster_project sensor not importable: {exc}")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={
            "landing": LandingResource(path=str(landing_root), min_age_seconds=0),
            "store": StoreResource(warehouse_uri=str(tmp_path / "wh"))})
        result = new_rating_files(context)
    requested = sorted(r.partition_key for r in result.run_requests)
    assert "good.csv" in requested and set(requested) <= {"good.csv", "link-in.csv"}, requested


def test_a_rating_batches_run_refuses_a_partition_key_that_escapes(landing_root, tmp_path):
    _landing_module()
    try:
        import dagster as dg

        from dagster_project.resources import LandingResource
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"dagster_project resources not importable: {exc}")
    resource = LandingResource(path=str(landing_root))
    for name in ("../secret.csv", "link-out.csv", "processed/../../secret.csv"):
        with pytest.raises(dg.Failure):
            resource.locate(name)
    assert resource.locate("good.csv") == landing_root / "good.csv"
