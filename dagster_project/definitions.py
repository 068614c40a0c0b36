"""The Dagster code location of streaming-als (``dagster dev -w workspace.yaml``)."""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import ALL_ASSETS
from dagster_project.automation import automation_sensor
from dagster_project.checks import ALL_CHECKS
from dagster_project.resources import default_resources
from dagster_project.schedules import ALL_JOBS, ALL_SCHEDULES
from dagster_project.sensors import new_rating_files

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    sensors=[new_rating_files, automation_sensor],
    schedules=ALL_SCHEDULES,
    jobs=ALL_JOBS,
    resources=default_resources(),
    # Steps are short and sequential: one process per run, not one per step.
    executor=dg.in_process_executor,
)
