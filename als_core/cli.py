"""The ``streaming-als`` console script (typer + rich)."""

from __future__ import annotations

import functools
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="streaming-als: batch ALS and streaming biased SGD over Delta tables (DuckDB or Spark SQL).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Define and list streaming models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)

WarehouseOpt = Annotated[Optional[str], typer.Option("--warehouse", "-w", envvar="STREAMING_ALS_WAREHOUSE",
                                                     help="Warehouse URI (default ./warehouse).")]
EngineOpt = Annotated[str, typer.Option("--engine", "-e", help="duckdb (embedded default) or spark.")]
SparkMasterOpt = Annotated[Optional[str], typer.Option("--spark-master", envvar="STREAMING_ALS_SPARK_MASTER",
                                                       help="Spark master URL (default local[*]).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model id (default: the champion, else the first active model).")]


def friendly_errors(fn):
    """Known failures print one clear line and exit 1 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from als_core.readers import RatingFileError
        from als_core.store.warehouse import StoreError

        try:
            return fn(*args, **kwargs)
        except (RatingFileError, StoreError, ValueError, FileNotFoundError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
    return wrapper


def _warehouse(uri):
    from als_core.store.warehouse import Warehouse

    return Warehouse(uri)


def _engine(name: str, spark_master: str | None = None):
    from als_core.engines.base import get_engine

    if name == "spark":
        return get_engine("spark", master=spark_master or "local[*]")
    return get_engine(name)


def _default_model(warehouse, model: str | None) -> str:
    if model:
        warehouse.model_record(model)
        return model
    models = warehouse.models().to_pylist()
    for status in ("champion", "active"):
        for m in models:
            if m["status"] == status:
                return m["model_id"]
    if models:
        return models[0]["model_id"]
    from als_core.store.warehouse import StoreError

    raise StoreError(f"no models in {warehouse.uri}: run `streaming-als demo`, or `streaming-als models create ID`")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _print_table(title: str, columns: list[str], rows) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r])
    console.print(table)


# --------------------------------------------------------------------------- demo
@app.command()
@friendly_errors
def demo(data: Annotated[Optional[Path], typer.Option(help="Rating file (default: the shipped MovieLens latest-small).")] = None,
         out: Annotated[Path, typer.Option(help="Output folder: warehouse/ and rmse_curve.png.")] = Path("demo-output"),
         batch_size: Annotated[int, typer.Option(help="Ratings per micro-batch.")] = 1000,
         engine: EngineOpt = "duckdb",
         warm_start: Annotated[int, typer.Option(help="Bootstrap from batch ALS on the first N batches (0: cold start).")] = 0,
         order: Annotated[str, typer.Option(help="Stream order: 'split' (the random split's order) or 'time'.")] = "split"):
    """The main job: batch ALS baseline + the training ratings streamed through the engine and Delta store."""
    from als_core.pipeline.demo import run_demo

    t0 = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("preparing", total=None)

        def on_stage(msg):
            progress.update(task, description=msg)

        def on_batch(done):
            progress.update(task, advance=1, description=f"streaming: version {done.version}, holdout RMSE {done.holdout_rmse:.4f}")

        def sized_stage(msg):
            on_stage(msg)
            if msg.startswith("stream"):
                progress.update(task, total=None)

        result = run_demo(data, out, batch_size=batch_size, engine=engine, warm_start_batches=warm_start, order=order,
                          on_batch=on_batch, on_stage=sized_stage)
    _print_table(f"streaming-als demo: {result.n_train} training ratings in {result.n_batches} batches, "
                 f"{result.n_test} holdout ratings", ["model", "holdout RMSE", "holdout MAE", "note"], result.rows())
    console.print(f"plot: {result.plot}\nwarehouse: {result.warehouse}  (try: streaming-als sql -w {result.warehouse} "
                  f"\"SELECT * FROM recommend('streaming', 1)\")\ntotal {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------- ingestion and streaming
@app.command()
@friendly_errors
def ingest(files: Annotated[list[Path], typer.Argument(help="Rating files (u.data, ratings.csv, ratings.dat, CSV, Parquet).")],
           warehouse: WarehouseOpt = None,
           holdout: Annotated[float, typer.Option(help="Fraction of (user, item) pairs routed to the holdout set.")] = 0.1):
    """Ingest rating files, one batch each (the same content twice is a no-op)."""
    from als_core.pipeline.ingest import ingest_file
    from als_core.readers import RatingFileError

    wh = _warehouse(warehouse)
    failed = 0
    for f in files:
        try:
            outcome = ingest_file(wh, f, holdout_fraction=holdout)
        except RatingFileError as exc:
            failed += 1
            err_console.print(f"[bold red]error:[/] {exc} (nothing committed)")
            continue
        console.print(outcome.summary())
        if outcome.n_rejected and not outcome.already_ingested:
            console.print(f"  [yellow]{outcome.n_rejected} rows rejected[/]: see table rejected_ratings "
                          f"(streaming-als sql \"SELECT * FROM rejected_ratings WHERE batch_id = '{outcome.batch_id}'\")")
    if failed:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def step(warehouse: WarehouseOpt = None, engine: EngineOpt = "duckdb", spark_master: SparkMasterOpt = None,
         model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Only these models.")] = None,
         evaluate_every: Annotated[int, typer.Option(help="Holdout evaluation every N versions (0: never).")] = 1):
    """Apply every pending batch, in seq order, to every active model."""
    from als_core.pipeline.apply import apply_pending

    wh = _warehouse(warehouse)
    eng = _engine(engine, spark_master)
    try:
        with _progress() as progress:
            task = progress.add_task("applying batches", total=None)
            report = apply_pending(wh, eng, model_ids=model, evaluate_every=evaluate_every,
                                   on_version=lambda d: progress.update(task, advance=1, description=f"{d.model_id} v{d.version}"))
    finally:
        eng.close()
    rows = [(a.model_id, a.version, a.batch_seq, a.n_ratings, a.prequential_rmse, a.holdout_rmse) for a in report.applied]
    if rows:
        _print_table("applied", ["model", "version", "batch", "ratings", "prequential RMSE", "holdout RMSE"], rows)
    else:
        console.print("nothing pending")
    for model_id, msg in report.failures.items():
        err_console.print(f"[bold red]refused:[/] {msg}")
    if report.failures:
        raise typer.Exit(1)


def parse_interval(text: str) -> float:
    """'5s', '500ms', '2m' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise ValueError(f"interval {text!r}: use e.g. 5s, 500ms, 2m")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


@app.command()
@friendly_errors
def replay(dataset: Annotated[Path, typer.Argument(help="A rating file to replay as a stream (time order).")],
           batch_size: Annotated[int, typer.Option(help="Ratings per micro-batch file.")] = 1000,
           interval: Annotated[str, typer.Option(help="Pause between batches, e.g. 5s (default: none).")] = "0s",
           to: Annotated[Optional[Path], typer.Option("--to", help="Drop batch files into this landing folder instead of applying them.")] = None,
           limit: Annotated[Optional[int], typer.Option(help="Stop after this many batches.")] = None,
           warehouse: WarehouseOpt = None, engine: EngineOpt = "duckdb", spark_master: SparkMasterOpt = None,
           holdout: Annotated[float, typer.Option(help="Holdout fraction when applying directly.")] = 0.1):
    """Split a rating file into time-ordered micro-batch files; apply each, or drop them into a landing folder."""
    from als_core.pipeline.replay import replay_batches

    pause = parse_interval(interval)
    eng = None if to else _engine(engine, spark_master)
    try:
        with _progress() as progress:
            task = progress.add_task("replaying", total=None)
            for event in replay_batches(dataset, batch_size=batch_size, landing=to, warehouse=None if to else _warehouse(warehouse),
                                        engine=eng, holdout_fraction=holdout, limit=limit, pause_seconds=pause):
                progress.update(task, total=event.total, advance=1, description=event.describe())
    finally:
        if eng is not None:
            eng.close()


# --------------------------------------------------------------------------- models and versions
@models_app.command("create")
@friendly_errors
def models_create(model_id: str, warehouse: WarehouseOpt = None,
                  rank: int = 10, gamma: float = 0.05, lambda_: Annotated[float, typer.Option("--lambda")] = 0.05,
                  lambda_bias: float = 3.0, init_scale: float = 0.1, seed: int = 42,
                  aggregation: Annotated[str, typer.Option(help="sum or mean")] = "mean",
                  bias_update: Annotated[str, typer.Option(help="sgd or running_mean")] = "running_mean"):
    """Register a streaming model (it learns from the next `step`)."""
    from als_core.pipeline.models import create_model
    from als_core.sgd import SGDParams

    params = SGDParams(rank=rank, gamma=gamma, lambda_=lambda_, lambda_bias=lambda_bias, init_scale=init_scale,
                       seed=seed, aggregation=aggregation, bias_update=bias_update)
    create_model(_warehouse(warehouse), model_id, params)
    console.print(f"model {model_id} created: {params}")


@models_app.command("list")
@friendly_errors
def models_list(warehouse: WarehouseOpt = None):
    """List models with their status and settings."""
    wh = _warehouse(warehouse)
    wh.ensure_tables()
    rows = [(m["model_id"], m["status"], m["rank"], m["gamma"], m["lambda_"], m["lambda_bias"], m["aggregation"],
             m["bias_update"], wh.applied_seq(m["model_id"]), m["note"]) for m in wh.models().to_pylist()]
    _print_table("models", ["model", "status", "rank", "γ", "λ", "λ_b", "aggregation", "bias", "applied batch", "note"], rows)


@app.command()
@friendly_errors
def versions(model: ModelOpt = None, warehouse: WarehouseOpt = None):
    """List a model's versions with their holdout RMSE."""
    wh = _warehouse(warehouse)
    wh.ensure_tables()
    model = _default_model(wh, model)
    evals = {}
    for e in wh.read("evaluations").to_pylist():
        if e["model_id"] == model:
            evals[(e["version"], e["kind"])] = e["rmse"]
    rows = [(v["version"], v["batch_seq"], v["n"], v["mu"], evals.get((v["version"], "prequential")),
             evals.get((v["version"], "holdout"))) for v in wh.model_versions(model).to_pylist()]
    _print_table(f"versions of {model}", ["version", "batch", "ratings seen", "μ", "prequential RMSE", "holdout RMSE"], rows)


@app.command()
@friendly_errors
def rollback(model: Annotated[str, typer.Argument()], version: Annotated[int, typer.Argument()], warehouse: WarehouseOpt = None):
    """Restore a model's state of VERSION as a new version (history is kept)."""
    from als_core.store.versions import rollback as do_rollback

    new = do_rollback(_warehouse(warehouse), model, version)
    console.print(f"{model}: version {new} restores version {version}")


@app.command()
@friendly_errors
def compact(model: ModelOpt = None, warehouse: WarehouseOpt = None,
            full: Annotated[bool, typer.Option("--full", help="Rewrite each whole model, even when merging "
                                               "the versions since its last compaction would do.")] = False):
    """Rewrite factors to the latest row per key (keeps reads O(batch)); all models by default.
    A model whose versions since its last full compaction are few beside it gets only those
    merged into one file (tiered compaction); --full rewrites it whole.
    Without --model, also merge the small files of the append-only tables (ratings, ledger,
    evaluations...), which keeps commits fast as batches accumulate."""
    from als_core.store.maintenance import compact_store_tables
    from als_core.store.versions import compact_factors

    wh = _warehouse(warehouse)
    wh.ensure_tables()
    ids = [model] if model else wh.models()["model_id"].to_pylist()
    for m in ids:
        r = compact_factors(wh, m, full=True if full else None)
        if r["kind"] == "none":
            console.print(f"{m}: nothing to compact (at most one file written since the last compaction)")
        else:
            part = "whole model" if r["kind"] == "full" else "versions since the last full compaction"
            console.print(f"{m}: {r['kind']} compaction ({part}), {r['rows_before']} rows -> {r['rows_after']}")
    if not model:
        for r in compact_store_tables(wh):
            if r["files_merged"]:
                console.print(f"{r['table']}: {r['files_merged']} small files merged into one")


@app.command("log-retention")
@friendly_errors
def log_retention(duration: Annotated[Optional[str], typer.Argument(
                      help="Keep each table's Delta log this long, e.g. '1 day', '12 hours'; omit to show the setting.")] = None,
                  warehouse: WarehouseOpt = None):
    """Show or set how long the Delta logs (and so time travel) are kept. Every commit lists
    the log folder: a shorter retention keeps commits fast as versions accumulate, but model
    versions older than the last compaction before that horizon can no longer be read."""
    wh = _warehouse(warehouse)
    settings = wh.set_log_retention(duration) if duration else wh.log_retention()
    _print_table("Delta log retention", ["table", "retention"], sorted(settings.items()))


# --------------------------------------------------------------------------- serving and SQL
@app.command()
@friendly_errors
def predict(user: int, item: int, model: ModelOpt = None, warehouse: WarehouseOpt = None):
    """Predicted rating of USER for ITEM (cold-start rule: unknown user/item -> μ + known bias)."""
    from als_core.sql_session import sql_session

    wh = _warehouse(warehouse)
    model = _default_model(wh, model)
    with sql_session(wh) as con:
        value = con.execute("SELECT predict(?, ?, ?)", [model, user, item]).fetchone()[0]
        known = con.execute("SELECT side FROM current_factors(?) WHERE (side = 'user' AND id = ?) OR (side = 'item' AND id = ?)",
                            [model, user, item]).fetchall()
    sides = {s for (s,) in known}
    notes = [f"unknown {s}: cold-start rule" for s in ("user", "item") if s not in sides]
    if value is None:
        raise ValueError(f"model {model!r} has no version yet: run `streaming-als step`")
    console.print(f"{value:.4f}" + (f"  ({'; '.join(notes)})" if notes else ""))


@app.command()
@friendly_errors
def recommend(user: int, n: Annotated[int, typer.Option("-n", help="How many items.")] = 10, model: ModelOpt = None,
              warehouse: WarehouseOpt = None):
    """Top-N items for USER that USER has not rated."""
    from als_core.sql_session import sql_session

    wh = _warehouse(warehouse)
    model = _default_model(wh, model)
    with sql_session(wh) as con:
        rows = con.execute("SELECT item_id, score, item_ratings, cold_start FROM recommend(?, ?, top_n := ?)",
                           [model, user, n]).fetchall()
    if rows and rows[0][3]:
        console.print(f"[yellow]note:[/] user {user} is unknown to {model} (cold start): these are the best items by bias")
    _print_table(f"top {n} for user {user} ({model})", ["item", "score", "ratings of item"], [r[:3] for r in rows])


@app.command()
@friendly_errors
def sql(query: Annotated[Optional[str], typer.Argument(help="SQL to run; omit for an interactive prompt.")] = None,
        warehouse: WarehouseOpt = None):
    """DuckDB over the store: tables + current_factors(), predict(), recommend(), model_versions, evaluation_history."""
    from als_core.sql_session import sql_session

    import duckdb

    with sql_session(_warehouse(warehouse)) as con:
        if query:
            try:
                _show(con, query)
            except duckdb.Error as exc:  # a bad query, or a macro's refusal: one line, exit 1
                err_console.print(f"[bold red]error:[/] {exc}")
                raise typer.Exit(1)
            return
        console.print("DuckDB over the store. End statements with ';'. Ctrl-D to quit.")
        buffer = ""
        while True:
            try:
                line = input("sql> " if not buffer else "...> ")
            except EOFError:
                break
            buffer += line + "\n"
            if buffer.strip().endswith(";"):
                try:
                    _show(con, buffer)
                except Exception as exc:  # keep the session alive on a bad query
                    err_console.print(f"[red]{exc}[/]")
                buffer = ""


def _show(con, query: str) -> None:
    cur = con.execute(query)
    if cur.description is None:
        return
    names = [d[0] for d in cur.description]
    _print_table("", names, cur.fetchall())


# --------------------------------------------------------------------------- batch ALS
@app.command("train-batch")
@friendly_errors
def train_batch(file: Annotated[Path, typer.Argument(help="Rating file to train on.")],
                rank: int = 10, iterations: int = 10, lambda_: Annotated[Optional[float], typer.Option("--lambda")] = None,
                lambda_bias: Optional[float] = None, seed: int = 42,
                engine: Annotated[str, typer.Option(help="numpy (default) or spark (MLlib ALS).")] = "numpy",
                spark_master: SparkMasterOpt = None,
                model: Annotated[Optional[str], typer.Option("--model", "-m", help="Also write the result as a version of this model in the store.")] = None,
                warehouse: WarehouseOpt = None):
    """Fit batch ALS on a rating file; optionally bootstrap a streaming model with it."""
    from als_core.als import ALSParams, fit_als
    from als_core.metrics import rmse
    from als_core.readers import read_ratings

    read = read_ratings(file)
    r = read.ratings
    if read.rejected.num_rows:
        console.print(f"[yellow]{read.rejected.num_rows} rows rejected[/] (first: line {read.rejected['line'][0]}: {read.rejected['reason'][0]})")
    defaults = ALSParams()
    lam = lambda_ if lambda_ is not None else defaults.lambda_
    lamb = lambda_bias if lambda_bias is not None else defaults.lambda_bias
    t0 = time.perf_counter()
    with console.status(f"fitting batch ALS ({engine}) on {r.num_rows} ratings"):
        if engine == "spark":
            from als_core.engines.spark_engine import SparkEngine, train_als_spark

            spark_engine = SparkEngine(master=spark_master or "local[*]")
            try:
                fitted = train_als_spark(spark_engine.spark, r, rank=rank, max_iter=iterations, reg_param=lam, seed=seed)
            finally:
                spark_engine.close()
        elif engine == "numpy":
            fitted = fit_als(r["user_id"].to_numpy(), r["item_id"].to_numpy(), r["rating"].to_numpy(),
                             ALSParams(rank=rank, iterations=iterations, lambda_=lam, lambda_bias=lamb, seed=seed))
        else:
            raise ValueError(f"engine must be numpy or spark, got {engine!r}")
    seconds = time.perf_counter() - t0
    train_rmse = rmse(r["rating"].to_numpy(), fitted.predict(r["user_id"].to_numpy(), r["item_id"].to_numpy(), clip=(0.5, 5.0)))
    _print_table("batch ALS", ["engine", "ratings", "users", "items", "rank", "fit s", "training RMSE"],
                 [(engine, r.num_rows, len(fitted.user_ids), len(fitted.item_ids), rank, seconds, train_rmse)])
    if model:
        from als_core.pipeline.models import bootstrap_model, create_model
        from als_core.sgd import SGDParams

        wh = _warehouse(warehouse)
        wh.ensure_tables()
        if model not in wh.models()["model_id"].to_pylist():
            from als_core.pipeline.models import DEFAULT_PARAMS

            create_model(wh, model, SGDParams(**{**DEFAULT_PARAMS.__dict__, "rank": rank}), note=f"bootstrapped from {engine} ALS")
        version = bootstrap_model(wh, model, fitted, through_seq=None)
        console.print(f"wrote {model} version {version} to {wh.uri}")


@app.command()
@friendly_errors
def evaluate(file: Annotated[Optional[Path], typer.Argument(help="Rating file (default: the shipped set).")] = None,
             split: Annotated[str, typer.Option(help="random (80/20, default_rng(42)) or temporal.")] = "random",
             rank: int = 10, iterations: int = 10, batch_size: int = 1000):
    """Split, fit batch ALS, a damped-bias baseline and the streaming reference; print RMSE/MAE."""
    from als_core.pipeline.evaluate import evaluate_file

    with console.status("evaluating"):
        rows = evaluate_file(file, split=split, rank=rank, iterations=iterations, batch_size=batch_size)
    _print_table(f"{split} split", ["model", "RMSE", "MAE", "seconds"], rows)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
