"""Peer comparison: our batch ALS and streaming engine against Spark MLlib ALS, River, Surprise
and LensKit, under one protocol.

Protocol (every system, every data set):

* **random** task: ``als_core.splits.random_split(ratings, 0.8, seed=42)`` (rows permuted with
  ``numpy.random.default_rng(42)``, the first 80 % train). Fit on the training rows (streaming
  systems: one pass, in the split's order), predict every test row. Unknown users/items get
  each system's own cold-start rule (ours and Surprise: μ + the known bias; River: μ + the
  bias defaults) or, where a system returns nothing (Spark ``NaN``, LensKit missing scores),
  the training mean. Predictions are clipped to the data set's rating scale (its min..max).
* **replay** task (streaming systems only): all ratings in time order, prequential: predict a
  batch, then learn it (1,000 ratings per batch for ours; ``predict_one`` then ``learn_one``
  per rating for River). RMSE/MAE over the last 20 % of the predictions, and ratings/s.
* Every (system, setting, data set, task) runs in its own subprocess, ``--repeats`` times;
  peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` plus the high-water mark of any
  process it started (Spark's JVM). Times are wall-clock: fit/update, predict; data loading
  and the split are not timed. Figures are reported as min and median over the repeats.
  Batch systems: "prepare" builds the system's own training structure from the training
  columns (Surprise's trainset, LensKit's Dataset, Spark's cached DataFrames; ours indexes and
  groups the rows inside ``fit_als``, so it is in "fit"); "fit" is the first fit in the fresh
  process; "warm fit" a second fit of the same setting in the same process.
* Settings: each system's documented defaults, and one small tuned setting (named in
  ``SETTINGS`` below with where it comes from). ``equal`` settings (rank 10, 10 iterations /
  epochs) exist for the speed comparison at equal work.

    .venv/bin/python benchmarks/peers.py                       # ml-100k, latest-small, synthetic 5M
    .venv/bin/python benchmarks/peers.py --datasets ml-100k latest-small --repeats 2
    .venv/bin/python benchmarks/peers.py --quick               # latest-small, 1 repeat, smoke test
    .venv/bin/python benchmarks/peers.py --datasets synthetic --synthetic-ratings 1000000

Results: ``benchmarks/results/peers.json`` (merged by key, so data sets can be run
separately) and a Markdown table on stdout (``--markdown FILE`` to write it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "peers.json"
DATA_CACHE = Path(tempfile.gettempdir()) / "streaming-als-peers-data"
STREAM_BATCH = 1_000
# LensKit pins pandas~=2 (the project uses pandas 3): it runs from its own venv, see docs/BENCHMARKS.md.
LENSKIT_PYTHON = os.environ.get("STREAMING_ALS_LENSKIT_PYTHON", "/tmp/venv-lenskit/bin/python")

# (system, setting) -> (parameters, note). Parameters are passed to the system's runner.
SETTINGS: dict[str, dict[str, tuple[dict, str]]] = {
    "ours-als": {
        "default": ({}, "ALSParams defaults: rank 10, 10 iterations, λ 15, λ_b 5 (chosen by a grid on the "
                        "latest-small random split, see als_core/als.py)"),
        "rank50": ({"rank": 50}, "rank 50, otherwise defaults"),
    },
    "ours-stream-numpy": {
        "default": ({"batch_size": STREAM_BATCH}, "DEFAULT_PARAMS (rank 10, γ 0.05, λ 0.05, λ_b 3, mean "
                                                  "aggregation, running-mean biases), 1,000-rating batches; "
                                                  "numpy reference of the SQL step"),
    },
    "ours-stream-duckdb": {
        "default": ({"batch_size": STREAM_BATCH}, "DEFAULT_PARAMS, 1,000-rating batches, DuckDB engine, one "
                                                  "Delta commit per batch, compaction every 50 versions"),
        "batch100k": ({"batch_size": 100_000}, "DEFAULT_PARAMS, 100,000-rating batches"),
        "shortlog": ({"batch_size": STREAM_BATCH, "log_retention": "1 second"},
                     "as default, with the store's Delta log retention set to 1 second before the stream "
                     "(`streaming-als log-retention`): the log stays ~100 entries long instead of growing "
                     "with every version"),
    },
    "ours-stream-spark": {
        "default": ({"batch_size": STREAM_BATCH}, "DEFAULT_PARAMS, 1,000-rating batches, Spark SQL engine (local[*])"),
        "batch100k": ({"batch_size": 100_000}, "DEFAULT_PARAMS, 100,000-rating batches, Spark SQL engine"),
    },
    "spark-als": {
        "default": ({}, "pyspark.ml ALS defaults: rank 10, maxIter 10, regParam 0.1 (no biases)"),
        "tuned": ({"rank": 10, "maxIter": 20, "regParam": 0.15}, "rank 10, maxIter 20, regParam 0.15 "
                                                                   "(small grid on the latest-small split)"),
    },
    "river-biasedmf": {
        "default": ({}, "river.reco.BiasedMF defaults: 10 factors, SGD(0.01) for biases and factors, no L2"),
        "tuned": ({"bias_lr": 0.025, "latent_lr": 0.05, "l2_bias": 0.0, "l2_latent": 0.0},
                  "the setting of River's MovieLens 100k tutorial: bias SGD(0.025), latent SGD(0.05), "
                  "Normal(0, 0.1) init"),
    },
    "surprise-svd": {
        "default": ({}, "surprise.SVD defaults: 100 factors, 20 epochs, lr 0.005, reg 0.02"),
        "equal": ({"n_factors": 10, "n_epochs": 10}, "10 factors, 10 epochs (equal rank/iterations), else defaults"),
        "tuned": ({"n_factors": 50, "n_epochs": 30, "lr_all": 0.01, "reg_all": 0.1},
                  "50 factors, 30 epochs, lr 0.01, reg 0.1 (small grid on the latest-small split)"),
    },
    "lenskit-biasedmf": {
        "default": ({}, "lenskit.als.BiasedMFScorer defaults: embedding size 50, 10 epochs, regularization 0.1, "
                        "damping 5; also the tuned setting: a small grid (size 10/20/50 x reg 0.1/0.5/1.0) on the "
                        "latest-small split found nothing better"),
        "equal": ({"embedding_size": 10, "epochs": 10}, "embedding size 10, 10 epochs, else defaults"),
    },
}
STREAMING = {"ours-stream-numpy", "ours-stream-duckdb", "ours-stream-spark", "river-biasedmf"}


# --------------------------------------------------------------------------- data

def dataset_file(name: str, synthetic_ratings: int) -> tuple[Path | None, str]:
    """Parquet file of the data set (prepared once, cached under the temp dir), and a note."""
    import pyarrow.parquet as pq

    from als_core import datasets

    DATA_CACHE.mkdir(parents=True, exist_ok=True)
    if name == "ml-100k":
        src = datasets.ml100k_path()
        if src is None:
            return None, "skipped: MovieLens 100k u.data not found (set STREAMING_ALS_ML100K)"
        path = DATA_CACHE / "ml-100k.parquet"
        if not path.exists():
            from als_core.readers import read_ratings
            pq.write_table(read_ratings(src).ratings, path)
        return path, str(src)
    if name == "latest-small":
        path = DATA_CACHE / "latest-small.parquet"
        if not path.exists():
            pq.write_table(datasets.load_shipped(), path)
        return path, "shipped MovieLens latest-small"
    if name == "synthetic":
        n_users, n_items = synthetic_shape(synthetic_ratings)
        path = DATA_CACHE / f"synthetic-{synthetic_ratings}.parquet"
        if not path.exists():
            pq.write_table(datasets.synthetic_ratings(synthetic_ratings, n_users, n_items, rank=10, seed=0), path)
        return path, f"synthetic_ratings({synthetic_ratings}, {n_users}, {n_items}, rank=10, seed=0)"
    raise ValueError(f"unknown data set {name!r}")


def synthetic_shape(n_ratings: int) -> tuple[int, int]:
    """Users and items for a synthetic set: 100 ratings per user, 500 per item on average."""
    return max(100, n_ratings // 100), max(50, n_ratings // 500)


def load(path: Path):
    """(table, users, items, ratings, scale) of a cached data set."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    r = table["rating"].to_numpy()
    return table, float(r.min()), float(r.max())


def columns(table):
    return (table["user_id"].to_numpy().astype(np.int64), table["item_id"].to_numpy().astype(np.int64),
            table["rating"].to_numpy().astype(np.float64))


# --------------------------------------------------------------------------- memory

def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant process of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def descendants_hwm_mb() -> float:
    """Summed peak RSS (VmHWM) of this process's live descendants (e.g. Spark's JVM)."""
    return sum(_status_kb(p, "VmHWM") for p in descendants(os.getpid())) / 1024


# --------------------------------------------------------------------------- systems
# Each runner: (task, params, table, scale) -> dict. Random task: fit_s, predict_s, rmse, mae.
# Replay task: update_s (predict + learn, whole stream), rmse/mae over the last 20 %.

def _fit_twice(fit):
    """Run ``fit()`` twice in this process: (first fit's seconds, second fit's seconds, what the
    second returned). The first pays for warm-up (imports, first allocations, JIT)."""
    t0 = time.perf_counter()
    fit()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = fit()
    return first, time.perf_counter() - t0, model


def _score(truth, pred, scale) -> dict:
    from als_core.metrics import mae, rmse
    pred = np.clip(np.asarray(pred, dtype=np.float64), *scale)
    return {"rmse": rmse(truth, pred), "mae": mae(truth, pred), "n_scored": int(len(truth))}


def _last20(truth, pred, scale) -> dict:
    """Scores of the last 20 % of the stream's predictions (positions without one: skipped, counted)."""
    truth, pred = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    cut = int(np.floor(0.8 * len(truth)))
    truth, pred = truth[cut:], pred[cut:]
    scored = ~np.isnan(pred)
    if not scored.any():  # e.g. a stream of one batch: a fresh model scores nothing before it learns
        return {"n_scored": 0, "n_unscored": int(len(truth)), "note": "no scored prediction in the last 20 %"}
    return {**_score(truth[scored], pred[scored], scale), "n_unscored": int((~scored).sum())}


def _time_ordered(table):
    from als_core.splits import time_order
    return table.take(time_order(table))


def _split(table):
    from als_core.splits import random_split
    return random_split(table, 0.8, seed=42)


def run_ours_als(task, params, table, scale):
    from als_core.als import ALSParams, fit_als, load_compiled
    load_compiled()  # numba and the compiled loops: a library import (~0.7 s), untimed like torch's
    train, test = _split(table)
    u, i, r = columns(train)
    tu, ti, tr = columns(test)
    # indexing and grouping the rows are part of the fit
    fit_s, fit_warm_s, model = _fit_twice(lambda: fit_als(u, i, r, ALSParams(**params)))
    t0 = time.perf_counter()
    pred = model.predict(tu, ti, clip=scale)
    predict_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "fit_warm_s": fit_warm_s, "prepare_s": 0.0, "predict_s": predict_s,
            **_score(tr, pred, scale)}


def run_ours_stream_numpy(task, params, table, scale):
    from als_core.pipeline.models import DEFAULT_PARAMS
    from als_core.sgd import empty_model, minibatch_step
    bs = params["batch_size"]
    if task == "random":
        train, test = _split(table)
        u, i, r = columns(train)
        tu, ti, tr = columns(test)
        t0 = time.perf_counter()
        model = empty_model(DEFAULT_PARAMS.rank)
        for s in range(0, len(r), bs):
            model = minibatch_step(model, u[s:s + bs], i[s:s + bs], r[s:s + bs], DEFAULT_PARAMS)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = model.predict(tu, ti, clip=scale)
        return {"fit_s": fit_s, "predict_s": time.perf_counter() - t0, **_score(tr, pred, scale)}
    u, i, r = columns(_time_ordered(table))
    preds = np.empty(len(r))
    t0 = time.perf_counter()
    model = empty_model(DEFAULT_PARAMS.rank)
    for s in range(0, len(r), bs):
        preds[s:s + bs] = model.predict(u[s:s + bs], i[s:s + bs], clip=scale)
        model = minibatch_step(model, u[s:s + bs], i[s:s + bs], r[s:s + bs], DEFAULT_PARAMS)
    update_s = time.perf_counter() - t0
    return {"update_s": update_s, "ratings_per_s": len(r) / update_s, "batches": -(-len(r) // bs),
            **_last20(r, preds, scale)}


class _Recorder:
    """Wraps an engine and keeps each step's prequential predictions (scored before learning)."""

    def __init__(self, engine):
        self.engine, self.name, self.prequential = engine, engine.name, []

    def step(self, warehouse, model, batch, *args, **kwargs):
        result = self.engine.step(warehouse, model, batch, *args, **kwargs)
        # Aligned to the batch's rows: a fresh model has no global row yet, and the engine then
        # scores nothing (NaN here), so positions in the stream stay exact.
        y = batch["rating"].to_numpy().astype(np.float64)
        p = np.full(len(y), np.nan)
        pq_ = result.prequential
        if pq_.num_rows:
            p[pq_["rating_seq"].to_numpy()] = pq_["prediction"].to_numpy()
        self.prequential.append((y, p))
        return result

    def score(self, *args, **kwargs):
        return self.engine.score(*args, **kwargs)

    def close(self):
        self.engine.close()


def _run_engine(engine_name, task, params, table, scale):
    from als_core.engines.base import get_engine
    from als_core.pipeline.apply import apply_pending
    from als_core.pipeline.ingest import ingest_table
    from als_core.pipeline.models import DEFAULT_PARAMS, create_model
    from als_core.store.versions import model_state, to_factor_model
    from als_core.store.warehouse import Warehouse

    bs = params["batch_size"]
    if task == "random":
        stream, test = _split(table)
    else:
        stream, test = _time_ordered(table), None
    with tempfile.TemporaryDirectory(prefix="peers-wh-") as tmp:
        wh = Warehouse(tmp)
        if params.get("log_retention"):
            wh.set_log_retention(params["log_retention"])
        create_model(wh, "m", DEFAULT_PARAMS)
        t0 = time.perf_counter()
        for k, s in enumerate(range(0, stream.num_rows, bs)):
            ingest_table(wh, stream.slice(s, bs), source=f"batch{k}", holdout=False)
        ingest_s = time.perf_counter() - t0
        t_engine = time.perf_counter()
        engine = _Recorder(get_engine(engine_name))
        engine_start_s = time.perf_counter() - t_engine
        try:
            t0 = time.perf_counter()
            report = apply_pending(wh, engine, evaluate_every=0, clip=scale)
            apply_s = time.perf_counter() - t0
            report.raise_failures()
            versions = len(report.applied)
            out = {"ingest_s": ingest_s, "apply_s": apply_s, "engine_start_s": engine_start_s, "batches": versions,
                   "jvm_or_child_hwm_mb": descendants_hwm_mb()}
            if task == "random":
                tu, ti, tr = columns(test)
                t0 = time.perf_counter()
                pred = to_factor_model(model_state(wh, "m")).predict(tu, ti, clip=scale)
                out.update(fit_s=ingest_s + apply_s, predict_s=time.perf_counter() - t0, **_score(tr, pred, scale))
            else:
                y = np.concatenate([a for a, _ in engine.prequential])
                p = np.concatenate([b for _, b in engine.prequential])
                out.update(update_s=apply_s, ratings_per_s=len(y) / apply_s,
                           ratings_per_s_incl_ingest=len(y) / (apply_s + ingest_s), **_last20(y, p, scale))
        finally:
            engine.close()
    return out


def run_ours_stream_duckdb(task, params, table, scale):
    return _run_engine("duckdb", task, params, table, scale)


def run_ours_stream_spark(task, params, table, scale):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return _run_engine("spark", task, params, table, scale)


def run_spark_als(task, params, table, scale):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    import pandas as pd
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    train, test = _split(table)
    t0 = time.perf_counter()
    spark = (SparkSession.builder.master("local[*]").appName("peers")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "6g")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    start_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="peers-spark-ckpt-") as ckpt:
        spark.sparkContext.setCheckpointDir(ckpt)
        u, i, r = columns(train)
        tu, ti, tr = columns(test)
        train_df = spark.createDataFrame(pd.DataFrame({"user": u.astype(np.int32), "item": i.astype(np.int32),
                                                       "rating": r.astype(np.float32)})).cache()
        test_df = spark.createDataFrame(pd.DataFrame({"rid": np.arange(len(tu)), "user": tu.astype(np.int32),
                                                      "item": ti.astype(np.int32)})).cache()
        train_df.count(), test_df.count()
        load_s = time.perf_counter() - t0 - start_s
        als = ALS(userCol="user", itemCol="item", ratingCol="rating", seed=42, **params)
        t0 = time.perf_counter()
        model = als.fit(train_df)
        fit_s = time.perf_counter() - t0
        # A second fit in the same (warm) JVM: the first one pays for JIT compilation too.
        t0 = time.perf_counter()
        model = als.fit(train_df)
        fit_warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.transform(test_df).select("rid", "prediction").toPandas().sort_values("rid")
        predict_s = time.perf_counter() - t0
        pred = out["prediction"].to_numpy(dtype=np.float64)
        n_cold = int(np.isnan(pred).sum())
        pred = np.where(np.isnan(pred), r.mean(), pred)  # Spark's cold start gives NaN: the train mean
        hwm = descendants_hwm_mb()
    spark.stop()
    return {"fit_s": fit_s, "fit_warm_s": fit_warm_s, "predict_s": predict_s, "session_start_s": start_s, "load_s": load_s,
            "prepare_s": load_s,
            "n_cold_filled": n_cold, "jvm_or_child_hwm_mb": hwm, **_score(tr, pred, scale)}


def _river_model(params):
    from river import optim, reco
    if not params:
        return reco.BiasedMF(seed=42)
    return reco.BiasedMF(
        n_factors=10, bias_optimizer=optim.SGD(params["bias_lr"]), latent_optimizer=optim.SGD(params["latent_lr"]),
        l2_bias=params["l2_bias"], l2_latent=params["l2_latent"], weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73), seed=42)


def run_river_biasedmf(task, params, table, scale):
    model = _river_model(params)
    if task == "random":
        train, test = _split(table)
        u, i, r = columns(train)
        tu, ti, tr = columns(test)
        u, i, r, tu, ti = u.tolist(), i.tolist(), r.tolist(), tu.tolist(), ti.tolist()
        learn, predict = model.learn_one, model.predict_one
        t0 = time.perf_counter()
        for a, b, y in zip(u, i, r):
            learn(a, b, y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = [predict(a, b) for a, b in zip(tu, ti)]
        return {"fit_s": fit_s, "predict_s": time.perf_counter() - t0, "learn_one_per_s": len(r) / fit_s,
                **_score(tr, pred, scale)}
    u, i, r = columns(_time_ordered(table))
    u, i, r = u.tolist(), i.tolist(), r.tolist()
    learn, predict = model.learn_one, model.predict_one
    preds = []
    t0 = time.perf_counter()
    for a, b, y in zip(u, i, r):
        preds.append(predict(a, b))
        learn(a, b, y)
    update_s = time.perf_counter() - t0
    return {"update_s": update_s, "ratings_per_s": len(r) / update_s, **_last20(r, preds, scale)}


def run_surprise_svd(task, params, table, scale):
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    train, test = _split(table)
    u, i, r = columns(train)
    tu, ti, tr = columns(test)
    t0 = time.perf_counter()
    data = Dataset.load_from_df(pd.DataFrame({"u": u, "i": i, "r": r}), Reader(rating_scale=scale))
    trainset = data.build_full_trainset()
    prepare_s = time.perf_counter() - t0
    fit_s, fit_warm_s, algo = _fit_twice(lambda: SVD(random_state=42, **params).fit(trainset))
    t0 = time.perf_counter()
    # predict() takes raw ids; unknown ids get μ + the known bias (SVD's own rule), clipped.
    pred = [algo.predict(a, b).est for a, b in zip(tu.tolist(), ti.tolist())]
    predict_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "fit_warm_s": fit_warm_s, "prepare_s": prepare_s, "predict_s": predict_s,
            **_score(tr, pred, scale)}


def run_lenskit_biasedmf(task, params, table, scale):
    import pandas as pd
    from lenskit.als import BiasedMFScorer
    from lenskit.data import from_interactions_df
    from lenskit.training import TrainingOptions

    train, test = _split(table)
    u, i, r = columns(train)
    tu, ti, tr = columns(test)
    frame = pd.DataFrame({"user_id": u, "item_id": i, "rating": r})
    # LensKit refuses repeated (user, item) pairs (the synthetic stream has some): keep the last.
    n_dup = int(frame.duplicated(["user_id", "item_id"], keep="last").sum())
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="last")
    t0 = time.perf_counter()
    ds = from_interactions_df(frame)  # LensKit's id indexes and rating matrix
    prepare_s = time.perf_counter() - t0

    def fit():
        scorer = BiasedMFScorer(**params)
        scorer.train(ds, TrainingOptions())
        return scorer
    fit_s, fit_warm_s, scorer = _fit_twice(fit)
    t0 = time.perf_counter()
    pred = lenskit_predict(scorer, tu, ti)
    predict_s = time.perf_counter() - t0
    n_cold = int(np.isnan(pred).sum())
    pred = np.where(np.isnan(pred), r.mean(), pred)
    return {"fit_s": fit_s, "fit_warm_s": fit_warm_s, "prepare_s": prepare_s, "predict_s": predict_s,
            "n_cold_filled": n_cold, "n_train_duplicates_dropped": n_dup,
            **_score(tr, pred, scale)}


def lenskit_predict(scorer, users, items) -> np.ndarray:
    """Scores for (user, item) pairs, one scorer call per user (LensKit's query API)."""
    from lenskit.data import ItemList
    pred = np.full(len(users), np.nan)
    order = np.argsort(users, kind="stable")
    su = users[order]
    bounds = np.flatnonzero(np.diff(su)) + 1
    for grp in np.split(order, bounds):
        scores = scorer(int(users[grp[0]]), ItemList(item_ids=items[grp]))
        out = scores.scores()  # aligned with the query items; NaN where it cannot score
        pred[grp] = np.nan if out is None else out
    return pred


RUNNERS = {
    "ours-als": run_ours_als, "ours-stream-numpy": run_ours_stream_numpy, "ours-stream-duckdb": run_ours_stream_duckdb,
    "ours-stream-spark": run_ours_stream_spark, "spark-als": run_spark_als, "river-biasedmf": run_river_biasedmf,
    "surprise-svd": run_surprise_svd, "lenskit-biasedmf": run_lenskit_biasedmf,
}


def worker(spec: dict) -> None:
    """Child process: load the data set, run one system once, write the result JSON."""
    table, lo, hi = load(Path(spec["data"]))
    rss_loaded_mb = _status_kb("self", "VmRSS") / 1024
    result = RUNNERS[spec["system"]](spec["task"], spec["params"], table, (lo, hi))
    result["rss_after_load_mb"] = rss_loaded_mb
    result["vm_hwm_mb"] = _status_kb("self", "VmHWM") / 1024  # this process's peak RSS (reset by exec)
    Path(spec["out"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent

def available(system: str) -> str | None:
    """None if the system can run here, else why not."""
    if system == "lenskit-biasedmf":
        probe = subprocess.run([LENSKIT_PYTHON, "-c", "import lenskit"], capture_output=True) \
            if Path(LENSKIT_PYTHON).exists() else None
        return None if probe is not None and probe.returncode == 0 else \
            f"not installed (no LensKit interpreter at {LENSKIT_PYTHON}; set STREAMING_ALS_LENSKIT_PYTHON)"
    mods = {"river-biasedmf": "river", "surprise-svd": "surprise", "spark-als": "pyspark", "ours-stream-spark": "pyspark"}
    mod = mods.get(system)
    if mod is None:
        return None
    import importlib.util
    if importlib.util.find_spec(mod) is None:
        return f"not installed ({mod})"
    return None


def run_child(spec: dict, time_limit: float) -> dict:
    """Run one measurement in a fresh interpreter; wall time, peak RSS and the result."""
    with tempfile.TemporaryDirectory(prefix="peers-run-") as tmp:
        out = Path(tmp) / "result.json"
        err = Path(tmp) / "stderr.txt"
        spec = {**spec, "out": str(out)}
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        with open(err, "w") as err_f:
            python = LENSKIT_PYTHON if spec["system"] == "lenskit-biasedmf" else sys.executable
            proc = subprocess.Popen([python, __file__, "--worker", json.dumps(spec)],
                                    stdout=subprocess.DEVNULL, stderr=err_f, start_new_session=True)
            timed_out = threading.Event()

            def kill():
                timed_out.set()
                try:
                    os.killpg(proc.pid, 9)  # the child and what it started (JVM), nothing else
                except ProcessLookupError:
                    pass
            timer = threading.Timer(time_limit, kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        base = {"wall_s": wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                # ru_maxrss of the child can include the parent's RSS at fork (Linux keeps the
                # high-water mark across exec), so peak_rss_mb uses the child's own VmHWM instead.
                "child_ru_maxrss_mb": usage.ru_maxrss / 1024}
        if timed_out.is_set():
            return {**base, "status": "did not finish", "time_limit_s": time_limit}
        if proc.returncode != 0 or not out.exists():
            tail = err.read_text()[-1500:]
            return {**base, "status": "failed", "error": tail}
        result = json.loads(out.read_text())
        result["peak_rss_mb"] = result["vm_hwm_mb"] + result.get("jvm_or_child_hwm_mb", 0.0)
        return {**base, "status": "ok", **result}


METRICS = ["fit_s", "fit_warm_s", "prepare_s", "predict_s", "update_s", "apply_s", "ingest_s", "ratings_per_s", "ratings_per_s_incl_ingest",
           "learn_one_per_s", "rmse", "mae", "peak_rss_mb", "session_start_s", "wall_s"]


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    out: dict = {"status": "ok" if len(ok) == len(runs) else (runs[-1]["status"] if not ok else "partly failed")}
    for key in METRICS:
        values = [r[key] for r in ok if key in r]
        if values:
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    ok_notes = sorted({r["note"] for r in ok if r.get("note")})
    if ok_notes:
        out["note"] = "; ".join(ok_notes)
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        out["note"] = bad[-1].get("error", "")[-400:] or f"{bad[-1]['status']} (limit {bad[-1].get('time_limit_s')} s)"
        if bad[-1]["status"] == "did not finish":
            out["time_limit_s"] = bad[-1]["time_limit_s"]
    return out


def machine() -> dict:
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) // 1024
    except OSError:
        pass
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib import metadata
    versions = {}
    for dist in ("numpy", "scipy", "pyarrow", "duckdb", "deltalake", "pyspark", "river", "scikit-surprise", "lenskit",
                 "torch"):
        try:
            versions[dist] = metadata.version(dist)  # no import: keeps this process small
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count(), "mem_total_mb": total, "versions": versions,
            "shared": "the machine was shared with other engineers' test runs during the measurements"}


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}g}"
    return str(v)


def markdown(results: list[dict]) -> str:
    lines = []
    for task in ("random", "replay"):
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        if task == "random":
            lines += ["### Random 80/20 split (min / median over repeats)", "",
                      "| data | system | setting | RMSE | MAE | prepare s | fit s | warm fit s | predict s | peak RSS MB | status |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["", "### Temporal replay, prequential (RMSE over the last 20 %)", "",
                      "| data | system | setting | RMSE | MAE | update s | ratings/s | peak RSS MB | status |",
                      "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            s = r["summary"]

            def mm(key, digits=3):
                v = s.get(key)
                return "–" if v is None else f"{fmt(v['min'], digits)} / {fmt(v['median'], digits)}"

            def one(key, digits=4):
                v = s.get(key)
                return "–" if v is None else fmt(v["median"], digits)  # deterministic: min == median
            status = s["status"] if s["status"] == "ok" else f"{s['status']}" + (
                f" ({s['time_limit_s']:.0f} s limit)" if "time_limit_s" in s else "")
            if s["status"] == "ok" and s.get("note"):
                status += f" ({s['note']})"
            if task == "random":
                lines.append(f"| {r['dataset']} | {r['system']} | {r['setting']} | {one('rmse')} | {one('mae')} | "
                             f"{mm('prepare_s')} | {mm('fit_s')} | {mm('fit_warm_s')} | {mm('predict_s')} | "
                             f"{mm('peak_rss_mb')} | {status} |")
            else:
                lines.append(f"| {r['dataset']} | {r['system']} | {r['setting']} | {one('rmse')} | {one('mae')} | "
                             f"{mm('update_s')} | {mm('ratings_per_s')} | {mm('peak_rss_mb')} | {status} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "latest-small", "synthetic"],
                    choices=["ml-100k", "latest-small", "synthetic"])
    ap.add_argument("--systems", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--tasks", nargs="+", default=["random", "replay"], choices=["random", "replay"])
    ap.add_argument("--settings", nargs="+", default=None, help="only these setting names")
    ap.add_argument("--skip", nargs="+", default=[], help="SYSTEM:SETTING pairs not to run (recorded as skipped)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--synthetic-ratings", type=int, default=5_000_000)
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds per run (then: did not finish)")
    ap.add_argument("--quick", action="store_true", help="latest-small only, one repeat")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.quick:
        args.datasets, args.repeats = ["latest-small"], 1

    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = {(r["dataset"], r["task"], r["system"], r["setting"]): r for r in previous.get("results", [])}
    notes = previous.get("notes", {})
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None  # the code measured
    for name in args.datasets:
        path, note = dataset_file(name, args.synthetic_ratings)
        notes[name] = note
        if path is None:
            print(f"{name}: {note}", flush=True)
            continue
        for system in args.systems:
            why = available(system)
            for setting, (params, setting_note) in SETTINGS[system].items():
                if args.settings and setting not in args.settings:
                    continue
                for task in args.tasks:
                    if task == "replay" and system not in STREAMING:
                        continue
                    key = (name, task, system, setting)
                    entry = {"dataset": name, "task": task, "system": system, "setting": setting,
                             "setting_note": setting_note, "params": params, "date": started, "commit": commit}
                    if f"{system}:{setting}" in args.skip:
                        entry.update(runs=[], summary={"status": "skipped", "note": "not run (--skip, time budget)"})
                    elif why:
                        entry.update(runs=[], summary={"status": "skipped", "note": why})
                    else:
                        runs = []
                        for rep in range(args.repeats):
                            run = run_child({"system": system, "task": task, "params": params, "data": str(path)},
                                            args.time_limit)
                            runs.append(run)
                            msg = run.get("rmse"), run.get("fit_s", run.get("update_s")), run["status"]
                            print(f"{name:12s} {task:6s} {system:18s} {setting:9s} #{rep + 1}: rmse={msg[0]} "
                                  f"time={msg[1]} {msg[2]} rss={run.get('peak_rss_mb')} load={run['loadavg_before']}",
                                  flush=True)
                            if run["status"] != "ok":
                                if run["status"] == "failed":
                                    print(run.get("error", "")[-800:], flush=True)
                                break  # a failure or timeout repeats; don't spend the time twice
                        entry.update(runs=runs, summary=summarise(runs))
                    kept[key] = entry
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    results = sorted(kept.values(), key=lambda r: (r["task"], r["dataset"], r["system"], r["setting"]))
                    args.out.write_text(json.dumps({
                        "protocol": __doc__, "machine": machine(), "notes": notes,
                        "repeats": args.repeats, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "loadavg_at_end": os.getloadavg(), "results": results}, indent=1, default=str))
    results = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    md = markdown(results)
    print(md)
    if args.markdown:
        args.markdown.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
