"""The Spark engine: the same sql/ step files as DuckDB, rendered for Spark SQL.

Reads: the model's stored factor rows come from ``spark.read.parquet`` over the data files
the store lists for the batch's ids (`Warehouse.factor_file_uris`: partition pruning on the
model plus min/max statistics; it refuses tables whose files are not plain Parquet, i.e.
Delta reader version > 1 or deletion vectors, since delta-spark is not used). The rows are
filtered to the model's batch ids on the executors; nothing but the result reaches the driver.

Writes: a step's new factor rows come back as Arrow (like DuckDB) when there are at most
``arrow_max_rows`` of them; the store commits them. Larger results stay on the cluster:
`SparkEngine.commit_staged_version` has Spark write them as Parquet into a staging folder
inside the table (``factors/model_id=<id>/staging-<seq>-<uuid>/``) and delta-rs commits those
files with ``create_write_transaction`` carrying the app transaction ``(model_id, seq)`` in the
same atomic commit, so exactly-once holds on both paths.

Batch ALS: `train_als_spark` fits Spark MLlib's ALS (the distributed baseline) and returns a
`FactorModel` the store can bootstrap a streaming model from.

Each call runs in its own ``SparkSession.newSession()`` (shared SparkContext), so the temp
views named after the step relations are private to the call, as DuckDB's cursors are.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from als_core.engines import sqlgen
from als_core.engines.base import (PREQUENTIAL_COLUMNS, PREQUENTIAL_RELATION, SCORE_FILES, STEP_FILES, ModelSpec,
                                   StepResult, batch_relation, in_rating_order, score_params)
from als_core.model import FactorModel
from als_core.store.schemas import FACTORS, TABLES, check_model_id
from als_core.store.warehouse import StoreError, check_plain_parquet, retry_commit

#: Results with more rows than this are committed through staged Parquet instead of Arrow.
DEFAULT_ARROW_MAX_ROWS = 200_000
#: Batches with more distinct ids than this select their stored rows by a semi-join with the
#: batch's keys instead of an ``id IN (...)`` list in the SQL text.
DEFAULT_IN_LIST_MAX = 20_000

#: Columns of the stored factor files the step reads (model_id is the partition: not in the files).
STORED_FACTORS_SCHEMA = "side STRING, id BIGINT, version BIGINT, n BIGINT, bias DOUBLE, vector ARRAY<FLOAT>"
_STORED_FACTORS_ARROW = pa.schema([("side", pa.string()), ("id", pa.int64()), ("version", pa.int64()),
                                   ("n", pa.int64()), ("bias", pa.float64()), ("vector", pa.list_(pa.float32()))])

#: delta-rs URI scheme -> Hadoop file system scheme Spark should use for it (override with
#: ``uri_schemes``; e.g. ``{}`` on EMR, where s3:// is EMRFS).
DEFAULT_URI_SCHEMES = {"s3": "s3a"}

#: Spark settings applied unless the caller's conf sets them.
DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # A step compiles ~200 generated classes; with the default cache (100 entries) every
    # batch recompiles them all (Janino), which doubled the CPU time of a local step.
    "spark.sql.codegen.cache.maxEntries": "2000",
}
#: Extra defaults for local masters (one JVM, short-lived, tiny tasks): a 1,000-rating batch
#: is a few hundred KB, so one partition per shuffle; C1-only JIT and the serial GC halve the
#: CPU a short run spends warming up (measured: first step 35 s -> 17 s CPU, later steps
#: 4.7 s -> 3.1 s). Override any of them through ``conf``.
LOCAL_CONF = {
    "spark.default.parallelism": "1",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}
#: Session settings of every step/score query on a local master (``session_conf`` overrides):
#: adaptive execution turns each shuffle into its own job, which costs more than it saves on
#: batch-sized data; explicit file lists above 32 paths would otherwise be listed by a job.
LOCAL_SESSION_CONF = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
}


class SparkEngineError(StoreError):
    """The Spark engine refused an operation."""


def build_spark_session(master: str = "local[*]", conf: dict | None = None, driver_memory: str | None = None,
                        app_name: str = "streaming-als"):
    """A SparkSession for ``master`` (``local[*]``, ``spark://host:7077``, ``yarn``, ``k8s://...``).

    Workers run this interpreter (PYSPARK_PYTHON defaults to ``sys.executable``); a local
    master binds to 127.0.0.1 unless SPARK_LOCAL_IP says otherwise."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    local = master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {**DEFAULT_CONF, **(LOCAL_CONF if local else {}), **(conf or {})}
    if driver_memory:
        settings["spark.driver.memory"] = driver_memory
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def ensure_checkpoint_dir(spark, path: str | None = None) -> str:
    """Set the SparkContext checkpoint dir if none is set (MLlib ALS needs one to cut its
    lineage: without it, 20 iterations die of StackOverflowError). Returns the dir."""
    sc = spark.sparkContext
    current = sc._jsc.sc().getCheckpointDir()
    if current.isDefined():
        return current.get()
    path = path or tempfile.mkdtemp(prefix="streaming-als-checkpoints-")
    sc.setCheckpointDir(path)
    return sc._jsc.sc().getCheckpointDir().get()


@dataclass
class SparkStepResult(StepResult):
    """A step's result on Spark. ``rows`` is Arrow when the result is small; for a large one
    it is None and ``frame`` (checkpointed on the executors) holds the rows until
    `SparkEngine.commit_step` (or `SparkEngine.release`)."""

    frame: Any = field(default=None, repr=False)  # checkpointed on the executors
    n_rows: int = 0

    @property
    def staged(self) -> bool:
        return self.rows is None


class SparkEngine:
    """The Engine protocol on Spark SQL (see the module docstring).

    ``spark``: an existing SparkSession to use (not stopped by `close`); otherwise one is
    built for ``master`` / ``conf`` / ``driver_memory`` / ``app_name``. ``arrow_max_rows``:
    results with more rows are committed through staged Parquet (`commit_step`).
    ``uri_schemes``: store URI scheme -> Hadoop scheme for Spark reads and writes.
    ``in_list_max``: above this many batch ids, stored rows are selected by a semi-join.
    ``session_conf``: SQL settings of each step's session (default: `LOCAL_SESSION_CONF` on a
    local master, nothing on a cluster)."""

    name = "spark"

    def __init__(self, master: str = "local[*]", conf: dict | None = None, driver_memory: str | None = None,
                 app_name: str = "streaming-als", spark=None, *, arrow_max_rows: int = DEFAULT_ARROW_MAX_ROWS,
                 uri_schemes: dict[str, str] | None = None, session_conf: dict | None = None,
                 in_list_max: int = DEFAULT_IN_LIST_MAX):
        from pyspark.sql import SparkSession

        if spark is None:
            self._owns_spark = SparkSession.getActiveSession() is None
            spark = build_spark_session(master, conf, driver_memory, app_name)
        else:
            self._owns_spark = False
        self.spark = spark
        self.arrow_max_rows = int(arrow_max_rows)
        self.in_list_max = int(in_list_max)
        self.uri_schemes = dict(DEFAULT_URI_SCHEMES if uri_schemes is None else uri_schemes)
        if session_conf is None:
            session_conf = LOCAL_SESSION_CONF if spark.sparkContext.master.startswith("local") else {}
        self.session_conf = {k: str(v) for k, v in session_conf.items()}

    # ------------------------------------------------------------------ reading the store
    def spark_uri(self, uri: str) -> str:
        """A store URI as Spark's Hadoop file systems name it (s3:// -> s3a:// by default)."""
        scheme, sep, rest = uri.partition("://")
        if sep and scheme in self.uri_schemes:
            return f"{self.uri_schemes[scheme]}://{rest}"
        return uri

    def stored_factors(self, session, warehouse, model_id: str, user_ids, item_ids, version: int | None = None):
        """The model's stored rows (every version <= ``version``) of these users and items plus
        its global rows, as a Spark DataFrame over the Delta data files that may hold them
        (``warehouse.factor_file_uris``, which refuses tables that are not plain Parquet);
        the rows are filtered on the executors. ``None`` ids: every key of that side."""
        uris = warehouse.factor_file_uris(model_id, user_ids, item_ids, version)
        if not uris:  # from Arrow, not a Python list: that would start Python workers
            return session.createDataFrame(_STORED_FACTORS_ARROW.empty_table())
        frame = session.read.schema(STORED_FACTORS_SCHEMA).parquet(*[self.spark_uri(u) for u in uris])
        if version is not None:
            frame = frame.where(f"version <= {int(version)}")
        whole = ["side = 'global'"] + [f"side = '{side}'" for side, ids in (("user", user_ids), ("item", item_ids))
                                       if ids is None]
        listed = [(side, np.unique(np.asarray(ids, dtype=np.int64))) for side, ids in
                  (("user", user_ids), ("item", item_ids)) if ids is not None]
        if sum(len(ids) for _, ids in listed) <= self.in_list_max:
            # one SQL string, not Column.isin (one py4j call per id: 1.7 s for 1,000 ratings)
            return frame.where(" OR ".join(whole + [
                f"(side = '{side}' AND id IN ({','.join(map(str, ids.tolist()))}))" for side, ids in listed if len(ids)]))
        keys = pa.table({"side": pa.array(np.concatenate([np.full(len(ids), side) for side, ids in listed])),
                         "id": pa.array(np.concatenate([ids for _, ids in listed]), pa.int64())})
        return frame.where(" OR ".join(whole)).unionByName(
            frame.join(session.createDataFrame(keys), ["side", "id"], "left_semi"))

    # ------------------------------------------------------------------ running sql/ files
    def _session(self):
        """A session of its own (shared SparkContext): private temp views and settings."""
        session = self.spark.newSession()
        for key, value in self.session_conf.items():
            session.conf.set(key, value)
        return session

    @staticmethod
    def _run(session, relations: dict, steps: list[tuple[str, str]], rank: int | None = None):
        """Register the input relations, then run each sql/ file as a temp view named after
        its relation; the last file's DataFrame and the checkpoints to release.

        A relation that later files read more than once is materialised with an eager
        ``localCheckpoint`` (DuckDB's temp tables): its rows are computed once, and the later
        queries see a plain scan instead of re-planning the whole upstream SQL."""
        for name, frame in relations.items():
            frame.createOrReplaceTempView(name)
        reused = _reused_relations(tuple(steps), rank)
        checkpoints, result = [], None
        try:
            for position, (file, name) in enumerate(steps):
                result = session.sql(sqlgen.load(file, "spark", rank))
                if position < len(steps) - 1 and name in reused:
                    result = result.localCheckpoint(eager=True)
                    checkpoints.append(result)
                result.createOrReplaceTempView(name)
        except BaseException:
            _release(checkpoints)
            raise
        return result, checkpoints

    def step(self, warehouse, model: ModelSpec, batch: pa.Table, new_version: int, batch_seq: int | None,
             clip: tuple[float, float]) -> SparkStepResult:
        ratings = batch_relation(batch)
        users, items = ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy()
        session = self._session()
        rows, checkpoints = self._run(session, {
            "stored_factors": self.stored_factors(session, warehouse, model.model_id, users, items),
            "batch_ratings": session.createDataFrame(ratings),
            "step_params": session.createDataFrame(model.step_params(new_version, batch_seq)),
            "score_params": session.createDataFrame(score_params(clip)),
        }, STEP_FILES, model.params.rank)
        try:
            # prequential: the batch scored by the factors as they were before it
            # (rating_errors' prediction; read more than once, so it is checkpointed)
            prequential = in_rating_order(session.table(PREQUENTIAL_RELATION).where("prediction IS NOT NULL")
                                          .select(*PREQUENTIAL_COLUMNS).toArrow())
            # one new row per user and item of the batch, plus the global row
            expected = len(np.unique(users)) + len(np.unique(items)) + 1
            if expected <= self.arrow_max_rows:
                table = _factor_table(rows.toArrow())
                return SparkStepResult(rows=table, prequential=prequential, n_rows=table.num_rows)
            frame = rows.localCheckpoint(eager=True)
            return SparkStepResult(rows=None, prequential=prequential, frame=frame, n_rows=frame.count())
        finally:
            _release(checkpoints)

    def score(self, warehouse, model_id: str, ratings: pa.Table, version: int | None,
              clip: tuple[float, float]) -> pa.Table:
        relation = batch_relation(ratings)
        session = self._session()
        stored = self.stored_factors(session, warehouse, model_id, relation["user_id"].to_numpy(),
                                     relation["item_id"].to_numpy(), version)
        scores, checkpoints = self._run(session, {
            "stored_factors": stored,
            "ratings_to_score": session.createDataFrame(relation),
            "score_params": session.createDataFrame(score_params(clip)),
        }, SCORE_FILES)
        try:
            return in_rating_order(scores.toArrow())
        finally:
            _release(checkpoints)

    # ------------------------------------------------------------------ committing results
    def check_frame(self, frame, rank: int) -> str | None:
        """What is wrong with factor rows kept on the cluster (non-finite values, vectors not of
        length ``rank``), or None: the Spark twin of ``apply.check_step_rows``."""
        from pyspark.sql import functions as F

        bad = lambda c: F.isnan(c) | (F.abs(c) == F.lit(float("inf")))  # noqa: E731
        stats = frame.agg(
            F.sum(F.when(bad(F.col("bias")) | F.col("bias").isNull() & (F.col("side") != "global"), 1)
                  .otherwise(0)).alias("bad_bias"),
            F.sum(F.when(F.exists("vector", bad), 1).otherwise(0)).alias("bad_vectors"),
            F.min(F.size("vector")).alias("min_len"),
            F.max(F.size("vector")).alias("max_len"),
        ).first()
        if stats["bad_bias"]:
            return f"the step produced {stats['bad_bias']} non-finite biases (gamma too large?)"
        if stats["bad_vectors"]:
            return f"the step produced {stats['bad_vectors']} non-finite factor vectors (gamma too large?)"
        lengths = [x for x in (stats["min_len"], stats["max_len"]) if x is not None and x >= 0]
        if lengths and (min(lengths) != rank or max(lengths) != rank):
            return f"vectors have length {min(lengths)}..{max(lengths)} but the model's rank is {rank}"
        return None

    def commit_step(self, warehouse, model_id: str, result: StepResult, seq: int | None) -> bool:
        """Commit a step's rows as the model's next version with the app transaction
        ``(model_id, seq)``: through Arrow for a small result, staged Parquet for a large one.
        False (nothing written) if that batch was applied already."""
        if result.rows is not None:
            return warehouse.commit_factor_version(model_id, result.rows, seq)
        try:
            return self.commit_staged_version(warehouse, model_id, result.frame, seq)
        finally:
            self.release(result)

    @staticmethod
    def release(result: StepResult) -> None:
        """Drop the cluster copy of a staged result (after commit, or to abandon it)."""
        frame = getattr(result, "frame", None)
        if frame is not None:
            _release([frame])
            result.frame = None

    def commit_staged_version(self, warehouse, model_id: str, frame, seq: int | None) -> bool:
        """Write factor rows (a Spark DataFrame with the FACTORS columns) as one version:
        Spark writes Parquet into ``factors/model_id=<id>/staging-<seq>-<uuid>/``, then delta-rs
        commits those files (``AddAction`` with the partition value and min/max statistics)
        together with the app transaction ``(model_id, seq)``. False, and the staging folder
        removed, if the batch was applied already (before or during the write)."""
        from deltalake import CommitProperties, Transaction
        from pyspark.sql import functions as F

        check_model_id(model_id)
        if seq and warehouse.applied_seq(model_id) >= seq:
            return False
        warehouse.ensure_tables()
        check_plain_parquet(warehouse.table("factors"), warehouse.table_uri("factors"))
        schema, partition_by = TABLES["factors"]
        table_uri = warehouse.table_uri("factors").rstrip("/")
        relative = f"model_id={model_id}/staging-{seq if seq is not None else 'none'}-{uuid.uuid4().hex}"
        target = self.spark_uri(_absolute(f"{table_uri}/{relative}"))
        columns = [F.col(f.name).cast(_spark_type(f.type)).alias(f.name) for f in schema if f.name not in partition_by]
        (frame.select(*columns).write.mode("errorifexists")
         .option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
         .option("compression", "snappy").parquet(target))
        try:
            actions = self._add_actions(target, relative, model_id)
            props = CommitProperties(app_transactions=[Transaction(app_id=model_id, version=seq)]) if seq else None

            def commit() -> bool:
                if seq and warehouse.applied_seq(model_id) >= seq:
                    return False
                warehouse.table("factors").create_write_transaction(
                    actions, mode="append", schema=schema, partition_by=partition_by, commit_properties=props)
                return True

            committed = retry_commit(commit)
        except BaseException:
            self._delete(target)
            raise
        if not committed:
            self._delete(target)
        return committed

    def _add_actions(self, target: str, relative: str, model_id: str) -> list:
        """One AddAction per Parquet file Spark wrote under ``target``: size and modification
        time from the Hadoop file system, Delta statistics from one Spark aggregation."""
        from deltalake.transaction import AddAction
        from pyspark.sql import functions as F

        stat_cols = ["version", "side", "id", "n", "bias", "batch_seq"]
        stats_frame = (self.spark.read.parquet(target).withColumn("_file", F.input_file_name())
                       .groupBy("_file").agg(
                           F.count(F.lit(1)).alias("numRecords"),
                           *[F.min(c).alias(f"min_{c}") for c in stat_cols],
                           *[F.max(c).alias(f"max_{c}") for c in stat_cols],
                           *[F.sum(F.col(c).isNull().cast("long")).alias(f"null_{c}") for c in stat_cols]))
        stats = {row["_file"].rsplit("/", 1)[-1]: row.asDict() for row in stats_frame.collect()}
        jvm = self.spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(target)
        fs = path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        actions = []
        for status in fs.listStatus(path):
            name = status.getPath().getName()
            if not name.endswith(".parquet") or name.startswith((".", "_")):
                continue
            s = stats.get(name)
            if s is None or not s["numRecords"]:
                continue
            delta_stats = {
                "numRecords": int(s["numRecords"]),
                "minValues": {c: s[f"min_{c}"] for c in stat_cols if s[f"min_{c}"] is not None},
                "maxValues": {c: s[f"max_{c}"] for c in stat_cols if s[f"max_{c}"] is not None},
                "nullCount": {c: int(s[f"null_{c}"]) for c in stat_cols},  # no list stats, as delta-rs
            }
            actions.append(AddAction(path=f"{relative}/{name}", size=int(status.getLen()),
                                     partition_values={"model_id": model_id},
                                     modification_time=int(status.getModificationTime()), data_change=True,
                                     stats=json.dumps(delta_stats)))
        if not actions:
            raise SparkEngineError(f"Spark wrote no Parquet files under {target}")
        return actions

    def _delete(self, target: str) -> None:
        jvm = self.spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(target)
        path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)

    def close(self) -> None:
        if self._owns_spark:
            self.spark.stop()


# ---------------------------------------------------------------------- helpers


@lru_cache(maxsize=None)
def _reused_relations(steps: tuple[tuple[str, str], ...], rank: int | None) -> frozenset[str]:
    """Relations defined by ``steps`` that the files read more than once (table references
    in the rendered SQL)."""
    counts: dict[str, int] = {}
    for file, _name in steps:
        tree = sqlglot.parse_one(sqlgen.load(file, "spark", rank), read="spark")
        for table in tree.find_all(exp.Table):
            counts[table.name] = counts.get(table.name, 0) + 1
    return frozenset(name for _file, name in steps if counts.get(name, 0) >= 2)


def _release(checkpoints) -> None:
    """Free the executor blocks of eagerly local-checkpointed DataFrames now (the context
    cleaner would only do it after a JVM garbage collection)."""
    for frame in checkpoints:
        try:
            frame._jdf.queryExecution().logical().rdd().unpersist(False)
        except Exception:  # not a LogicalRDD (already released, or another plan): nothing to free
            pass


def _absolute(uri: str) -> str:
    return uri if "://" in uri else "file://" + os.path.abspath(uri)


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_int64(t):
        return "bigint"
    if pa.types.is_float64(t):
        return "double"
    if pa.types.is_float32(t):
        return "float"
    if pa.types.is_list(t):
        return f"array<{_spark_type(t.value_type)}>"
    raise TypeError(f"no Spark type for {t}")


def _factor_table(table: pa.Table) -> pa.Table:
    """Spark's Arrow result with the FACTORS types (list field names differ)."""
    return table.select(FACTORS.names).cast(FACTORS)


# ---------------------------------------------------------------------- batch ALS on Spark


def train_als_spark(spark, ratings_arrow: pa.Table, rank: int = 10, max_iter: int = 10, reg_param: float = 0.1,
                    seed: int = 42, *, checkpoint_dir: str | None = None, checkpoint_interval: int = 5,
                    return_spark_model: bool = False):
    """Fit Spark MLlib's ALS (explicit feedback) and return it as a `FactorModel`.

    ALS has no biases, so it is fitted to the centred ratings ``r - μ`` (μ = training mean):
    the FactorModel has zero biases and ``predict = μ + U_u · P_i``. Ids are mapped to dense
    int32 indices (MLlib needs integer ids) and back. ``coldStartStrategy='drop'``; the
    checkpoint dir is set if missing (long lineages otherwise overflow the stack).
    With ``return_spark_model``: ``(FactorModel, ALSModel, index)`` where ``index`` maps ids
    to the dense indices the ALSModel knows (``index(user_ids, item_ids) -> (u, i)``)."""
    from pyspark.ml.recommendation import ALS

    if ratings_arrow.num_rows == 0:
        raise ValueError("batch ALS needs at least one rating")
    ensure_checkpoint_dir(spark, checkpoint_dir)
    users = ratings_arrow["user_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    items = ratings_arrow["item_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    ratings = ratings_arrow["rating"].to_numpy(zero_copy_only=False).astype(np.float64)
    mu = float(ratings.mean())
    user_ids, u_idx = np.unique(users, return_inverse=True)
    item_ids, i_idx = np.unique(items, return_inverse=True)
    frame = spark.createDataFrame(pa.table({
        "user": pa.array(u_idx.astype(np.int32)), "item": pa.array(i_idx.astype(np.int32)),
        "rating": pa.array(ratings - mu)}))
    als = ALS(rank=rank, maxIter=max_iter, regParam=reg_param, seed=seed, userCol="user", itemCol="item",
              ratingCol="rating", coldStartStrategy="drop", nonnegative=False, implicitPrefs=False,
              checkpointInterval=checkpoint_interval)
    fitted = als.fit(frame)

    def factors(df, n: int) -> np.ndarray:
        table = df.toArrow()
        out = np.zeros((n, rank), dtype=np.float64)
        idx = table["id"].to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(table["features"]).to_numpy(zero_copy_only=False)
        out[idx] = flat.reshape(len(idx), rank).astype(np.float32).astype(np.float64)
        return out

    model = FactorModel(
        mu=mu,
        user_ids=user_ids, user_bias=np.zeros(len(user_ids)), user_factors=factors(fitted.userFactors, len(user_ids)),
        item_ids=item_ids, item_bias=np.zeros(len(item_ids)), item_factors=factors(fitted.itemFactors, len(item_ids)),
        user_counts=np.bincount(u_idx, minlength=len(user_ids)).astype(np.int64),
        item_counts=np.bincount(i_idx, minlength=len(item_ids)).astype(np.int64),
        n_ratings=len(ratings),
    )
    if not return_spark_model:
        return model

    def index(u, i):
        return (np.searchsorted(user_ids, np.asarray(u, np.int64)), np.searchsorted(item_ids, np.asarray(i, np.int64)))

    return model, fitted, index


__all__ = ["SparkEngine", "SparkStepResult", "SparkEngineError", "build_spark_session", "ensure_checkpoint_dir",
           "train_als_spark", "DEFAULT_ARROW_MAX_ROWS"]
