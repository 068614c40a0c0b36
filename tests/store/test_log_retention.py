"""Delta log retention: a bounded log keeps commits cheap; versions past it fail loudly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from als_core.cli import app
from als_core.engines.base import get_engine
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.store.versions import compact_factors, model_state, rollback
from als_core.store.warehouse import DEFAULT_LOG_RETENTION, LOG_RETENTION_PROPERTY, StoreError, delta_interval


def test_durations_become_delta_intervals_and_nonsense_is_refused():
    assert delta_interval("1 day") == "interval 1 days"
    assert delta_interval("INTERVAL 12 Hours") == "interval 12 hours"
    for bad in ("", "forever", "1.5 days", "-1 day", "3 fortnights"):
        with pytest.raises(StoreError, match="expected a duration"):
            delta_interval(bad)


def test_set_log_retention_writes_the_property_on_every_table(warehouse):
    assert set(warehouse.log_retention().values()) == {DEFAULT_LOG_RETENTION}
    settings = warehouse.set_log_retention("2 days")
    assert set(settings.values()) == {"interval 2 days"} and "factors" in settings
    # Stored in the Delta metadata, so every writer (any process) honours it.
    fresh = DeltaTable(warehouse.table_uri("factors"))
    assert fresh.metadata().configuration[LOG_RETENTION_PROPERTY] == "interval 2 days"


def test_cli_shows_and_sets_the_log_retention(warehouse):
    runner = CliRunner()
    shown = runner.invoke(app, ["log-retention", "-w", warehouse.uri])
    assert shown.exit_code == 0 and "interval 30 days" in shown.output
    changed = runner.invoke(app, ["log-retention", "6 hours", "-w", warehouse.uri])
    assert changed.exit_code == 0 and "interval 6 hours" in changed.output
    refused = runner.invoke(app, ["log-retention", "soon", "-w", warehouse.uri])
    assert refused.exit_code == 1 and "expected a duration" in refused.output


def test_a_version_whose_log_was_cleaned_up_is_refused_not_read_as_empty(warehouse, shipped):
    engine = get_engine("duckdb")
    try:
        for k in range(4):
            ingest_table(warehouse, shipped.slice(k * 500, 500), source=f"b{k}", holdout=False)
        create_model(warehouse, "m", DEFAULT_PARAMS)
        apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
        before = model_state(warehouse, "m", 2).num_rows
        compact_factors(warehouse, "m")  # version 2 now lives only in the Delta history
        assert model_state(warehouse, "m", 2).num_rows == before

        warehouse.set_log_retention("1 hour")
        log = Path(warehouse.table_uri("factors")) / "_delta_log"
        day_ago = time.time() - 86_400
        for entry in log.glob("*.json"):  # every entry so far is "a day old": past the retention
            os.utime(entry, (day_ago, day_ago))
        current = model_state(warehouse, "m")
        dt = warehouse.table("factors")
        dt.create_checkpoint()  # delta-rs does both on its own every 100 commits
        dt.cleanup_metadata()

        assert len(list(log.glob("*.json"))) < 3
        with pytest.raises(StoreError, match="no longer readable: its Delta log entries were cleaned up"):
            model_state(warehouse, "m", 2)
        with pytest.raises(StoreError, match="no longer readable"):
            rollback(warehouse, "m", 2)
        # The current state and new versions are unaffected.
        assert model_state(warehouse, "m").equals(current)
        ingest_table(warehouse, shipped.slice(2_000, 500), source="b4", holdout=False)
        report = apply_pending(warehouse, engine, evaluate_every=0, compact_every=0)
        assert [v.version for v in report.applied] == [5]
    finally:
        engine.close()
