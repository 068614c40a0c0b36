"""Asset checks: the stream is caught up, and the scores are sane."""

from __future__ import annotations

import math

import dagster as dg

from als_core.pipeline.grid_models import latest_evaluations
from dagster_project.assets import factor_versions, model_evaluations
from dagster_project.reporting import ledger_seq, md_table
from dagster_project.resources import StoreResource


@dg.asset_check(asset=factor_versions, description="Every active/champion model has applied every batch of the ledger.")
def models_caught_up(store: StoreResource) -> dg.AssetCheckResult:
    warehouse = store.warehouse()
    seq = ledger_seq(warehouse)
    live = [m for m in warehouse.models().to_pylist() if m["status"] in ("active", "champion")]
    lagging = [(m["model_id"], warehouse.applied_seq(m["model_id"]), m["note"]) for m in live
               if warehouse.applied_seq(m["model_id"]) < seq]
    return dg.AssetCheckResult(
        passed=not lagging, severity=dg.AssetCheckSeverity.WARN,
        metadata={"ledger_seq": seq, "live_models": len(live),
                  "lagging": md_table(["model", "applied batch", "note"], lagging)})


@dg.asset_check(asset=model_evaluations, description="Every latest holdout/prequential RMSE is finite and in [0, 4.5].")
def evaluations_finite(store: StoreResource) -> dg.AssetCheckResult:
    bad = [(r["model_id"], r["holdout_rmse"], r["prequential_rmse"]) for r in latest_evaluations(store.warehouse())
           if any(v is not None and not (math.isfinite(v) and 0 <= v <= 4.5)
                  for v in (r["holdout_rmse"], r["prequential_rmse"]))]
    return dg.AssetCheckResult(passed=not bad, metadata={"bad": md_table(["model", "holdout RMSE", "prequential RMSE"], bad)})


ALL_CHECKS = [models_caught_up, evaluations_finite]
