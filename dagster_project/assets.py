"""The assets of DESIGN.md (Dagster section). Each one is a thin call into als_core.

Writers of factors and models share the pool ``streaming_als_factors`` (limit 1 in
dagster_project/dagster.yaml), on top of the store's own per-model locks and Delta app
transactions, so two runs never double-apply a batch or interleave versions. Ingestion has
its pool (and the store's ingest lock), and so do the holdout evaluations (which take each
model's lock while they read it).
"""

import math

import dagster as dg

from als_core.als import ALSParams
from als_core.pipeline.apply import apply_pending
from als_core.pipeline.grid_models import (
    bootstrap_new_model, ensure_grid_models, evaluate_missing_versions, fit_batch_baseline, holdout_curves,
    latest_baseline, latest_evaluations, prune_due_rounds,
)
from als_core.pipeline.ingest import ingest_file
from als_core.readers import RatingFileError
from als_core.store.maintenance import compact_store_tables
from als_core.store.versions import compact_factors
from dagster_project.automation import AFTER_UPSTREAM_RUN, GRID_CHANGED, NEW_UPSTREAM_DATA
from dagster_project.reporting import (
    embedded_png, ledger_seq, md_table, models_table, table_rows,
)
from dagster_project.resources import (
    EngineResource, GridResource, LandingResource, StoreResource, grid_fingerprint, grid_from_env,
)

GROUP = "streaming_als"
POOL_FACTORS = "streaming_als_factors"
POOL_INGEST = "streaming_als_ingest"
POOL_EVALUATIONS = "streaming_als_evaluations"
rating_files = dg.DynamicPartitionsDefinition(name="rating_files")


@dg.asset(partitions_def=rating_files, pool=POOL_INGEST, group_name=GROUP, kinds={"delta"},
          description="One landed rating file ingested as one batch (ratings, ledger row, rejected rows). "
                      "Exactly once by content hash; an unreadable file fails the run and moves to rejected/.")
def rating_batches(context: dg.AssetExecutionContext, store: StoreResource, landing: LandingResource) -> dg.MaterializeResult:
    path = landing.locate(context.partition_key)
    try:
        outcome = ingest_file(store.warehouse(), path, holdout_fraction=store.holdout_fraction)
    except RatingFileError as exc:
        moved = landing.reject(path, str(exc)) if landing.in_landing(path) else path
        raise dg.Failure(description=f"rejected {path.name}: {exc}. Nothing was committed; the file is now {moved}.",
                         metadata={"file": dg.MetadataValue.path(str(moved)), "reason": str(exc)},
                         allow_retries=False) from exc
    moved = landing.mark_processed(path, outcome.batch_id[:12]) if landing.move_processed and landing.in_landing(path) else path
    context.log.info(outcome.summary())
    return dg.MaterializeResult(metadata={
        "batch_seq": outcome.seq, "batch_id": outcome.batch_id, "already_ingested": outcome.already_ingested,
        "dagster/row_count": outcome.n_rows, "holdout_rows": outcome.n_holdout, "rejected_rows": outcome.n_rejected,
        "file": dg.MetadataValue.path(str(moved)), "summary": outcome.summary(),
    })


@dg.asset(pool=POOL_FACTORS, group_name=GROUP, kinds={"delta"}, automation_condition=GRID_CHANGED,
          code_version=grid_fingerprint(grid_from_env()),
          description="The grid of streaming models (rank x lambda x gamma); creates the missing ones.")
def hyperparameter_grid(store: StoreResource, grid: GridResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    created, existing = ensure_grid_models(warehouse, grid.spec())
    return dg.MaterializeResult(metadata={
        "grid_size": len(created) + len(existing), "created": ", ".join(created) or "none",
        "ranks": str(grid.ranks), "lambdas": str(grid.lambdas), "gammas": str(grid.gammas),
        "models": models_table(warehouse),
    })


@dg.asset(deps=[rating_batches, hyperparameter_grid], pool=POOL_FACTORS, group_name=GROUP, kinds={"delta"},
          automation_condition=NEW_UPSTREAM_DATA,
          description="Every pending batch applied, in seq order, to every active model (one factor version "
                      "per batch and model; idempotent), with prequential and holdout evaluations.")
def factor_versions(context: dg.AssetExecutionContext, store: StoreResource, engine: EngineResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    with engine.open() as eng:
        report = apply_pending(warehouse, eng, evaluate_every=1)
    for model_id, message in report.failures.items():
        context.log.warning(f"{model_id}: {message}")
    return dg.MaterializeResult(metadata={
        "versions_written": len(report.applied), "ledger_seq": ledger_seq(warehouse),
        "failures": "; ".join(f"{m}: {msg}" for m, msg in report.failures.items()) or "none",
        "factors_rows": table_rows(warehouse, "factors"), "ratings_rows": table_rows(warehouse, "ratings"),
        "models": models_table(warehouse),
    })


@dg.asset(deps=[factor_versions], pool=POOL_EVALUATIONS, group_name=GROUP, kinds={"delta"},
          automation_condition=AFTER_UPSTREAM_RUN,
          description="Holdout and prequential RMSE/MAE per model version (holdout evaluations for versions "
                      "that lack one are computed here).")
def model_evaluations(store: StoreResource, engine: EngineResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    with engine.open() as eng:
        written = evaluate_missing_versions(warehouse, eng)
    rows = latest_evaluations(warehouse)
    best = min((r for r in rows if r["holdout_rmse"] is not None), key=lambda r: r["holdout_rmse"], default=None)
    metadata = {
        "evaluations_written": len(written), "evaluations_rows": table_rows(warehouse, "evaluations"),
        "best_model": best["model_id"] if best else "none",
        "latest": md_table(["model", "status", "version", "holdout RMSE", "holdout MAE", "prequential RMSE",
                            "prequential MAE"], [tuple(r.values())[:7] for r in rows]),
    }
    if best:
        metadata["best_holdout_rmse"] = float(best["holdout_rmse"])
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=[hyperparameter_grid, model_evaluations], pool=POOL_FACTORS, group_name=GROUP, kinds={"delta"},
          automation_condition=NEW_UPSTREAM_DATA,
          description="Every prune_every batches: successive halving of the live grid models on their recent "
                      "prequential RMSE; the best becomes champion, the rest of the losers stop learning.")
def grid_pruning(context: dg.AssetExecutionContext, store: StoreResource, grid: GridResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    rounds = prune_due_rounds(warehouse, grid.model_ids(), every=grid.prune_every, keep_fraction=grid.keep_fraction,
                              min_keep=grid.min_keep, window=grid.window or None)
    decisions = []
    for r in rounds:
        context.log.info(f"round {r.round} at batch {r.boundary_seq}: kept {r.kept}, pruned {r.pruned}, "
                         f"champion {r.champion or 'unchanged'}")
        decisions += [(r.round, m, r.scores[m], "pruned" if m in r.pruned else "champion" if m == r.champion else "kept",
                       r.reasons.get(m, "")) for m in r.kept + r.pruned]
    status = {m["model_id"]: m["status"] for m in warehouse.models().to_pylist()}
    return dg.MaterializeResult(metadata={
        "rounds_run": len(rounds), "pruned": ", ".join(m for r in rounds for m in r.pruned) or "none",
        "champion": ", ".join(m for m, s in status.items() if s == "champion") or "none",
        "live_models": sum(1 for s in status.values() if s in ("active", "champion")),
        "decisions": md_table(["round", "model", "recent prequential RMSE", "decision", "why"], decisions),
        "models": models_table(warehouse),
    })


class BaselineConfig(dg.Config):
    rank: int = 10
    iterations: int = 10
    lambda_: float = 0.1
    lambda_bias: float = 0.1
    bootstrap_model: str = ""  # also write the fit as the first version of this (new) model


@dg.asset(deps=[rating_batches], pool=POOL_FACTORS, group_name=GROUP, kinds={"numpy", "delta"},
          description="Batch ALS (numpy) on every training rating in the store; its holdout RMSE is written "
                      "to evaluations (kind batch_baseline). Optionally bootstraps a new streaming model.")
def batch_als_baseline(context: dg.AssetExecutionContext, config: BaselineConfig, store: StoreResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    params = ALSParams(rank=config.rank, iterations=config.iterations, lambda_=config.lambda_,
                       lambda_bias=config.lambda_bias)
    try:
        outcome = fit_batch_baseline(warehouse, params)
    except ValueError as exc:  # no ratings yet: nothing to fit, not a failure
        context.log.info(str(exc))
        return dg.MaterializeResult(metadata={"skipped": str(exc)})
    if config.bootstrap_model:
        if bootstrap_new_model(warehouse, config.bootstrap_model, outcome) is None:
            context.log.warning(f"model {config.bootstrap_model!r} already has versions: not bootstrapped")
    metadata = {
        "through_batch": outcome.through_seq, "training_rows": outcome.n_train, "holdout_rows": outcome.n_holdout,
        "bootstrapped": f"{outcome.bootstrapped} v{outcome.bootstrap_version}" if outcome.bootstrapped else "none",
    }
    if outcome.rmse is not None:
        metadata.update(holdout_rmse=float(outcome.rmse), holdout_mae=float(outcome.mae))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=[model_evaluations, batch_als_baseline], group_name=GROUP, kinds={"matplotlib"},
          automation_condition=NEW_UPSTREAM_DATA,
          description="PNG: holdout RMSE per factor version of each model against the batch ALS line.")
def rmse_curve(store: StoreResource) -> dg.MaterializeResult:
    from als_core.plots import rmse_curve as plot_rmse_curve  # matplotlib: imported by the runs that plot only

    warehouse = store.warehouse()
    status = {m["model_id"]: m["status"] for m in warehouse.models().to_pylist()}
    curves = {f"{m} ({status.get(m, '?')})": xy for m, xy in holdout_curves(warehouse).items()}
    if not curves:
        return dg.MaterializeResult(metadata={"skipped": "no holdout evaluations yet"})
    baseline = latest_baseline(warehouse)
    baselines = {f"batch ALS (through batch {baseline['version']})": baseline["rmse"]} if baseline else {}
    path = plot_rmse_curve(store.artifacts_path() / "rmse_curve.png", curves, baselines)
    last = [ys[-1] for xs, ys in curves.values() if ys and math.isfinite(ys[-1])]
    metadata = {"plot": embedded_png(path, "holdout RMSE per version"), "path": dg.MetadataValue.path(str(path)),
                "models_plotted": len(curves)}
    if last:
        metadata["best_latest_rmse"] = min(last)
    if baseline:
        metadata["batch_als_rmse"] = float(baseline["rmse"])
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=[factor_versions], pool=POOL_FACTORS, group_name=GROUP, kinds={"delta"},
          description="Rewrites each changed model's factors to the latest row per key (time travel keeps the "
                      "history; only the versions since the last full rewrite while they are few) so a "
                      "batch's reads stay O(batch), and merges the small files of the append-only "
                      "tables (ratings, ledger, evaluations...) so commits stay fast. Runs on a schedule.")
def factor_compaction(store: StoreResource) -> dg.MaterializeResult:
    warehouse = store.warehouse()
    merged = {r["table"]: r["files_merged"] for r in compact_store_tables(warehouse)}
    done = {}
    for c in warehouse.read("compactions").to_pylist():
        done[c["model_id"]] = max(done.get(c["model_id"], 0), c["compacted_version"] or 0)
    records = []
    for model_id in warehouse.models()["model_id"].to_pylist():
        if warehouse.current_version(model_id) > done.get(model_id, 0):
            record = compact_factors(warehouse, model_id)  # tiered while the versions since are few
            if record["kind"] != "none":
                records.append(record)
    return dg.MaterializeResult(metadata={
        "models_compacted": len(records), "factors_rows": table_rows(warehouse, "factors"),
        "small_files_merged": md_table(["table", "files merged"], sorted(merged.items())),
        "compactions": md_table(["model", "version", "kind", "rows before", "rows after"],
                                [(r["model_id"], r.get("compacted_version"), r["kind"], r["rows_before"],
                                  r["rows_after"]) for r in records]),
    })


ALL_ASSETS = [rating_batches, hyperparameter_grid, factor_versions, model_evaluations, grid_pruning,
              batch_als_baseline, rmse_curve, factor_compaction]
