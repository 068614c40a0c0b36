"""The new_rating_files sensor and the landing-folder rules: only complete files, exactly once
through the ledger, no path leaving the landing root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import landing as files
from dagster_project.resources import LandingResource


def test_only_complete_visible_files_are_candidates(tmp_path):
    root = tmp_path / "landing"
    root.mkdir()
    for name in ("good.csv", ".hidden.csv", "half.csv.tmp", "upload.PART", "a...csv"):
        (root / name).write_text("user_id,item_id,rating\n1,1,4\n")
    (root / "processed").mkdir()
    (root / "processed" / "old.csv").write_text("x")
    outside = tmp_path / "secret.csv"
    outside.write_text("user_id,item_id,rating\n1,1,4\n")
    (root / "escape.csv").symlink_to(outside)
    (root / "inside-link.csv").symlink_to(root / "good.csv")
    (root / "dir.csv").mkdir()
    assert [f.name for f in files.scan(root)] == sorted(["good.csv", "inside-link.csv"],
                                                         key=lambda n: ((root / n).stat().st_mtime_ns, n))


@pytest.mark.parametrize("name", ["../x.csv", "..", ".", "a/b.csv", ".x.csv", "x.tmp", "", "a\nb.csv"])
def test_child_refuses_names_that_are_not_plain_files(tmp_path, name):
    with pytest.raises(files.UnsafePathError):
        files.child(tmp_path, name)


def test_moves_stay_inside_the_landing_root(tmp_path):
    root = tmp_path / "landing"
    root.mkdir()
    first = root / "b.csv"
    first.write_text("one")
    assert files.move_into(root, first, "processed") == root / "processed" / "b.csv"
    second = root / "b.csv"
    second.write_text("two")
    moved = files.move_into(root, second, "processed", tag="abc123")
    assert moved == root / "processed" / "abc123-b.csv" and moved.read_text() == "two"
    for bad in ("../out", "a/b", "..", ".hidden"):
        with pytest.raises(files.UnsafePathError):
            files.move_into(root, moved, bad)
    # a processed/ that is a symlink out of the root is refused, the file stays put
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "rejected").symlink_to(elsewhere)
    third = root / "c.csv"
    third.write_text("three")
    with pytest.raises(files.UnsafePathError):
        files.move_into(root, third, "rejected")
    assert third.exists() and not any(elsewhere.iterdir())


def test_stability_between_ticks_when_files_are_young(pipeline):
    pipeline.resources["landing"] = LandingResource(path=str(pipeline.landing), min_age_seconds=3600)
    path = pipeline.drop(1)
    first = pipeline.tick()
    assert first.run_requests == [] and "not complete yet" in first.skip_reason.skip_message
    assert json.loads(first.cursor)["seen"] == {path.name: [path.stat().st_size, path.stat().st_mtime_ns]}
    # still being written: size and mtime change between ticks -> wait again
    with open(path, "a") as handle:
        handle.write("610,1,4.0,1\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert pipeline.tick().run_requests == []
    second = pipeline.tick()  # unchanged since the previous tick: complete
    assert [r.partition_key for r in second.run_requests] == [path.name]
    assert pipeline.tick().run_requests == []  # requested once


def test_old_enough_files_are_requested_on_the_first_tick(pipeline):
    pipeline.resources["landing"] = LandingResource(path=str(pipeline.landing), min_age_seconds=30)
    path = pipeline.drop(1)
    old = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(old, old))
    assert [r.partition_key for r in pipeline.tick().run_requests] == [path.name]


def test_exactly_once_rests_on_the_ledger_not_the_cursor(pipeline):
    pipeline.resources["landing"] = LandingResource(path=str(pipeline.landing), min_age_seconds=0,
                                                    move_processed=False)
    pipeline.drop(1)
    pipeline.drop(2)
    result = pipeline.tick()
    assert len(result.run_requests) == 2
    assert all(o.success for o in pipeline.run_requests(result))
    ledger = pipeline.warehouse.ledger().num_rows
    assert pipeline.tick().run_requests == []  # cursor: handled
    reset = pipeline.tick(cursor=None)  # cursor lost: the ledger knows the content
    assert reset.run_requests == [] and "2 duplicate(s)" in reset.skip_reason.skip_message
    pipeline.drop(1, name="copy-of-1.csv")  # same content, new name
    assert pipeline.tick().run_requests == []
    # a new file keeps its own run key even if its name was used before
    (pipeline.landing / "batch-001.csv").unlink()
    pipeline.drop(3, name="batch-001.csv")
    rerun = pipeline.tick()
    assert [r.partition_key for r in rerun.run_requests] == ["batch-001.csv"]
    assert rerun.run_requests[0].run_key not in {r.run_key for r in result.run_requests}
    assert pipeline.warehouse.ledger().num_rows == ledger


def test_symlinks_escaping_the_landing_root_are_never_ingested(pipeline, tmp_path):
    secret = tmp_path / "outside.csv"
    secret.write_text("user_id,item_id,rating\n1,1,4\n")
    pipeline.landing.mkdir(parents=True)
    (pipeline.landing / "link.csv").symlink_to(secret)
    assert pipeline.tick().run_requests == []
    out = pipeline.ingest("link.csv", raise_on_error=False)  # a manual run of that partition
    assert not out.success
    failure = next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE")
    assert "outside the landing folder" in failure.step_failure_data.user_failure_data.description
    assert secret.exists() and (pipeline.landing / "link.csv").is_symlink()
    out = pipeline.ingest("..%2Fx", raise_on_error=False)  # no such file
    assert not out.success
    assert pipeline.warehouse.table("batches") is None


def test_sensor_definition(pipeline):
    from dagster_project.definitions import defs

    sensor = next(s for s in defs.sensors if s.name == "new_rating_files")
    assert sensor.minimum_interval_seconds == 5
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert Path(pipeline.resources["landing"].path).name == "landing"
