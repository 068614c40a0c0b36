"""Declarative automation: a new batch flows through factor_versions, then model_evaluations,
grid_pruning and rmse_curve, without anyone clicking.

``NEW_UPSTREAM_DATA`` is ``eager()`` minus two parts that do not fit a stream:

* ``~any_deps_missing``: factor_versions depends on every partition of rating_batches, and a
  rejected file leaves its partition missing for good; eager() would then never run again.
  The assets apply whatever the ledger holds, so a missing partition is no reason to wait.
* resetting on ``newly_updated``: a batch that lands while factor_versions is already running
  (after that run read the ledger) would be forgotten when the run finishes. Resetting only on
  ``newly_requested`` asks for one more run instead, which is idempotent.

``AFTER_UPSTREAM_RUN`` is the same but ignores ``will_be_requested``: model_evaluations waits
for factor_versions to *finish* instead of joining its run, so factor_versions runs alone
(the new version is queryable as soon as that short run ends, and the next batch is never
held up by plotting), and model_evaluations, grid_pruning and rmse_curve follow in one run.
"""

from __future__ import annotations

import os

import dagster as dg

AC = dg.AutomationCondition

NEW_UPSTREAM_DATA = (
    AC.any_deps_updated().since(AC.newly_requested() | AC.initial_evaluation())
    & ~AC.in_progress()
).with_label("upstream updated since last request")

_UPSTREAM_FINISHED = AC.any_deps_match(
    AC.newly_updated() & ~AC.executed_with_root_target()).with_label("any_deps_finished")
AFTER_UPSTREAM_RUN = (
    _UPSTREAM_FINISHED.since(AC.newly_requested() | AC.initial_evaluation())
    & ~AC.in_progress()
).with_label("upstream run finished since last request")

# hyperparameter_grid: materialize when never materialized (and the last attempt did not
# fail), and again when the grid settings (its code version) change.
GRID_CHANGED = (
    ((AC.missing() & ~AC.execution_failed()) | AC.code_version_changed().since_last_handled())
    & ~AC.in_progress()
).with_label("missing or grid settings changed")

AUTOMATION_INTERVAL = int(os.environ.get("STREAMING_ALS_AUTOMATION_INTERVAL", "5"))

automation_sensor = dg.AutomationConditionSensorDefinition(
    "streaming_als_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL,
    description="Evaluates the automation conditions of every asset every "
                f"{AUTOMATION_INTERVAL} s (STREAMING_ALS_AUTOMATION_INTERVAL).",
)
