"""Schedules: factor compaction and the batch ALS baseline (cron from the environment)."""

from __future__ import annotations

import os

import dagster as dg

from dagster_project.assets import batch_als_baseline, factor_compaction

compaction_job = dg.define_asset_job("factor_compaction_job", selection=[factor_compaction])
baseline_job = dg.define_asset_job("batch_als_baseline_job", selection=[batch_als_baseline])

factor_compaction_schedule = dg.ScheduleDefinition(
    name="factor_compaction_schedule", job=compaction_job,
    cron_schedule=os.environ.get("STREAMING_ALS_COMPACTION_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Compacts the factors of every model that changed (STREAMING_ALS_COMPACTION_CRON).")

batch_als_baseline_schedule = dg.ScheduleDefinition(
    name="batch_als_baseline_schedule", job=baseline_job,
    cron_schedule=os.environ.get("STREAMING_ALS_BASELINE_CRON", "0 4 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refits the batch ALS baseline on every training rating (STREAMING_ALS_BASELINE_CRON).")

ALL_JOBS = [compaction_job, baseline_job]
ALL_SCHEDULES = [factor_compaction_schedule, batch_als_baseline_schedule]
