"""Use case: the quick-start demo.

Random 80/20 split of a rating file (numpy ``default_rng(42)``), batch ALS baseline on the
80 %, the 80 % streamed in micro-batches through an engine + the Delta store (the 20 %
ingested as the holdout batch), holdout RMSE after each batch, a PNG of the curve against
the batch ALS line and a closing table.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from als_core.als import ALSParams, fit_als, load_compiled
from als_core.datasets import shipped_ratings_path
from als_core.engines.base import get_engine
from als_core.metrics import mae, rmse
from als_core.pipeline.apply import apply_pending, record_evaluation
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import DEFAULT_PARAMS, bootstrap_model, create_model
from als_core.plots import rmse_curve
from als_core.readers import read_ratings
from als_core.schema import DEFAULT_SCALE
from als_core.sgd import SGDParams, replay
from als_core.splits import random_split, time_order
from als_core.store.warehouse import Warehouse

STREAMING_MODEL = "streaming"
BATCH_MODEL = "batch_als"


@dataclass
class DemoResult:
    out_dir: Path
    warehouse: str
    n_train: int
    n_test: int
    n_batches: int
    batch_rmse: float
    batch_mae: float
    batch_fit_seconds: float
    versions: list[int] = field(default_factory=list)
    holdout_rmse: list[float] = field(default_factory=list)
    final_rmse: float = float("nan")
    final_mae: float = float("nan")
    reference_rmse: float = float("nan")
    stream_seconds: float = 0.0
    plot: Path | None = None

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, RMSE, MAE, note) lines of the closing table."""
        ratio = self.final_rmse / self.batch_rmse
        return [
            ("batch ALS", f"{self.batch_rmse:.4f}", f"{self.batch_mae:.4f}", f"fit {self.batch_fit_seconds:.2f} s"),
            ("streaming, final version", f"{self.final_rmse:.4f}", f"{self.final_mae:.4f}",
             f"{self.n_batches} batches in {self.stream_seconds:.1f} s; {ratio:.3f} x batch ALS"),
            ("numpy reference replay", f"{self.reference_rmse:.4f}", "", "same settings, no store: engine parity check"),
        ]


def run_demo(path: str | Path | None = None, out_dir: str | Path = "demo-output", *, batch_size: int = 1000,
             engine: str = "duckdb", params: SGDParams = DEFAULT_PARAMS, als_params: ALSParams | None = None,
             warm_start_batches: int = 0, order: str = "split", scale: tuple[float, float] = DEFAULT_SCALE,
             on_batch=None, on_stage=None) -> DemoResult:
    """Run the demo end to end into ``out_dir`` (its warehouse is recreated each run)."""
    def stage(msg: str) -> None:
        if on_stage:
            on_stage(msg)

    path = Path(path) if path else shipped_ratings_path()
    ratings = read_ratings(path, scale=scale).ratings
    train, test = random_split(ratings, 0.8, seed=42)
    if order == "time":  # stream in time order instead of the split's random order
        train = train.take(time_order(train))
    elif order != "split":
        raise ValueError(f"order must be 'split' or 'time', got {order!r}")

    stage("batch ALS baseline")
    als_params = als_params or ALSParams()
    load_compiled()  # its one-off import (or compile, on a fresh install) is not the fit's time

    t0 = time.perf_counter()
    col = lambda t, c: t[c].to_numpy()  # noqa: E731
    batch = fit_als(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), als_params)
    fit_seconds = time.perf_counter() - t0
    batch_pred = batch.predict(col(test, "user_id"), col(test, "item_id"), clip=scale)

    out_dir = Path(out_dir)
    wh_dir = out_dir / "warehouse"
    if wh_dir.exists():
        shutil.rmtree(wh_dir)
    warehouse = Warehouse(str(wh_dir))
    stage("ingest micro-batches")
    ingest_table(warehouse, test, source=f"{path.name}:holdout", holdout=True)
    n_batches = 0
    last_seq = {}
    for start in range(0, train.num_rows, batch_size):
        outcome = ingest_table(warehouse, train.slice(start, batch_size), holdout=False,
                               source=f"{path.name}:train[{start}:{start + batch_size}]")
        n_batches += 1
        last_seq[n_batches] = outcome.seq
    record_evaluation(warehouse, BATCH_MODEL, 0, "batch_baseline", col(test, "rating"), batch_pred)
    create_model(warehouse, STREAMING_MODEL, params, note="demo")
    if warm_start_batches:
        stage(f"warm start from batch ALS on the first {warm_start_batches} batches")
        head = train.slice(0, warm_start_batches * batch_size)
        warm = fit_als(col(head, "user_id"), col(head, "item_id"), col(head, "rating"),
                       ALSParams(**{**als_params.__dict__, "rank": params.rank}))
        bootstrap_model(warehouse, STREAMING_MODEL, warm, through_seq=last_seq[min(warm_start_batches, n_batches)])

    stage("stream micro-batches")
    result = DemoResult(out_dir, warehouse.uri, train.num_rows, test.num_rows, n_batches, rmse(col(test, "rating"), batch_pred),
                        mae(col(test, "rating"), batch_pred), fit_seconds)
    eng = get_engine(engine)
    t0 = time.perf_counter()

    def on_version(done):
        result.versions.append(done.version)
        result.holdout_rmse.append(done.holdout_rmse)
        if on_batch:
            on_batch(done)

    try:
        report = apply_pending(warehouse, eng, model_ids=[STREAMING_MODEL], on_version=on_version, clip=scale)
    finally:
        eng.close()
    report.raise_failures()
    result.stream_seconds = time.perf_counter() - t0
    evals = warehouse.read("evaluations").to_pylist()
    final = max((e for e in evals if e["model_id"] == STREAMING_MODEL and e["kind"] == "holdout"), key=lambda e: e["version"])
    result.final_rmse, result.final_mae = final["rmse"], final["mae"]

    # The same stream through the numpy reference: what the engine must (and does) match.
    ref = replay(col(train, "user_id"), col(train, "item_id"), col(train, "rating"), params, batch_size) if not warm_start_batches else None
    if ref is not None:
        result.reference_rmse = rmse(col(test, "rating"), ref.predict(col(test, "user_id"), col(test, "item_id"), clip=scale))
    result.plot = rmse_curve(out_dir / "rmse_curve.png", {f"streaming ({engine})": (result.versions, result.holdout_rmse)},
                             {"batch ALS": result.batch_rmse},
                             title=f"{path.name}: holdout RMSE after each {batch_size}-rating batch")
    return result
