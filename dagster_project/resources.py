"""Resources: the store (warehouse URI), the engine (DuckDB or Spark), the landing folder and
the hyperparameter grid. `default_resources` reads them from environment variables, with
defaults that make ``dagster dev -w workspace.yaml`` work from the repository root:

=================================  =====================  ==========================================
variable                           default                meaning
=================================  =====================  ==========================================
STREAMING_ALS_WAREHOUSE            ./warehouse            warehouse URI (local folder or any delta-rs URI)
STREAMING_ALS_LANDING              ./landing              landing folder the sensor watches
STREAMING_ALS_ENGINE               duckdb                 duckdb or spark
STREAMING_ALS_SPARK_MASTER         local[*]               Spark master URL (engine spark)
STREAMING_ALS_HOLDOUT              0.1                    fraction of (user, item) pairs held out
STREAMING_ALS_MIN_FILE_AGE         2                      seconds; see dagster_project.landing
STREAMING_ALS_MOVE_PROCESSED       1                      move ingested files to processed/ (0: leave)
STREAMING_ALS_ARTIFACTS            <warehouse>/_artifacts where rmse_curve.png is written
STREAMING_ALS_GRID                 (see GridResource)     JSON, e.g. {"ranks": [5, 10], "prune_every": 10}
=================================  =====================  ==========================================

Relative paths are made absolute against the working directory the code is loaded from
(the repository root for workspace.yaml), so the sensor, the runs and ``streaming-als sql``
all see the same folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import Field

from als_core.pipeline.grid_models import GridSpec, grid_params
from als_core.store.warehouse import Warehouse
from dagster_project import landing as files

ENV_WAREHOUSE = "STREAMING_ALS_WAREHOUSE"
ENV_LANDING = "STREAMING_ALS_LANDING"
ENV_ENGINE = "STREAMING_ALS_ENGINE"
ENV_SPARK_MASTER = "STREAMING_ALS_SPARK_MASTER"
ENV_HOLDOUT = "STREAMING_ALS_HOLDOUT"
ENV_MIN_FILE_AGE = "STREAMING_ALS_MIN_FILE_AGE"
ENV_MOVE_PROCESSED = "STREAMING_ALS_MOVE_PROCESSED"
ENV_ARTIFACTS = "STREAMING_ALS_ARTIFACTS"
ENV_GRID = "STREAMING_ALS_GRID"
ENGINES = ("duckdb", "spark")


def _local_path(value: str) -> str:
    """Absolute path for a local folder; URIs (s3://, file://...) unchanged."""
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))


class StoreResource(dg.ConfigurableResource):
    """The Delta factor store."""

    warehouse_uri: str = Field(description="Warehouse URI: a local folder or any delta-rs URI.")
    holdout_fraction: float = Field(default=0.1, description="Fraction of (user, item) pairs routed to the holdout set.")
    artifacts_dir: str = Field(default="", description="Folder for plots; empty: <warehouse>/_artifacts (local "
                                                       "warehouse) or a temporary folder.")

    def warehouse(self) -> Warehouse:
        return Warehouse(self.warehouse_uri)

    def artifacts_path(self) -> Path:
        if self.artifacts_dir:
            path = Path(self.artifacts_dir)
        elif "://" not in self.warehouse_uri or self.warehouse_uri.startswith("file://"):
            path = Path(self.warehouse_uri.removeprefix("file://")) / "_artifacts"
        else:
            path = Path(tempfile.gettempdir()) / "streaming-als-artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path


class EngineResource(dg.ConfigurableResource):
    """Which engine runs the sql/ step: DuckDB (embedded) or Spark (``spark_master``)."""

    name: str = Field(default="duckdb", description="duckdb or spark")
    spark_master: str = Field(default="local[*]", description="Spark master URL, for engine spark")

    @contextmanager
    def open(self) -> Iterator[object]:
        from als_core.engines.base import get_engine

        if self.name not in ENGINES:
            raise dg.Failure(f"engine must be one of {ENGINES}, got {self.name!r}")
        engine = get_engine("spark", master=self.spark_master) if self.name == "spark" else get_engine("duckdb")
        try:
            yield engine
        finally:
            engine.close()


class LandingResource(dg.ConfigurableResource):
    """The folder rating files land in (see dagster_project.landing for the convention)."""

    path: str = Field(description="Landing folder watched by the new_rating_files sensor.")
    min_age_seconds: float = Field(default=2.0, description="A file whose size/mtime did not change between two "
                                   "sensor ticks, or whose mtime is at least this old, is complete.")
    move_processed: bool = Field(default=True, description="Move ingested files to processed/.")
    processed_dir: str = Field(default="processed", description="Subfolder (inside the landing folder) for "
                                                                "ingested files.")
    rejected_dir: str = Field(default="rejected", description="Subfolder (inside the landing folder) for files "
                                                              "that could not be read.")

    def root(self) -> Path:
        root = Path(self.path)
        root.mkdir(parents=True, exist_ok=True)
        return root

    def scan(self) -> list[files.LandedFile]:
        return files.scan(self.root())

    def locate(self, name: str) -> Path:
        """The file of a partition: in the landing folder, else (a rerun after it was ingested)
        in processed/. Raises dg.Failure for unsafe names or when it is in neither."""
        root = self.root()
        try:
            candidates = [files.child(root, name), files.child(root / files.check_subdir_name(self.processed_dir), name)]
        except files.UnsafePathError as exc:
            raise dg.Failure(description=f"refused partition {name!r}: {exc}", allow_retries=False) from exc
        for path in candidates:
            if path.is_symlink() and not files.inside(root, path):
                raise dg.Failure(description=f"refused {path}: a symlink leading outside the landing folder {root}",
                                 allow_retries=False)
            if path.is_file():
                return path
        raise dg.Failure(description=f"no file {name!r} in {root} or {root / self.processed_dir} (moved or deleted?)",
                         allow_retries=False)

    def in_landing(self, path: Path) -> bool:
        return path.parent.resolve() == self.root().resolve()

    def reject(self, path: Path, reason: str, tag: str = "") -> Path:
        """Move a bad file to rejected/ and write ``<name>.reason.txt`` beside it."""
        dest = files.move_into(self.root(), path, self.rejected_dir, tag)
        dest.with_name(dest.name + ".reason.txt").write_text(reason + "\n")
        return dest

    def mark_processed(self, path: Path, tag: str = "") -> Path:
        return files.move_into(self.root(), path, self.processed_dir, tag)


class GridResource(dg.ConfigurableResource):
    """The hyperparameter grid (rank x lambda x gamma, other settings from DEFAULT_PARAMS) and
    how it is pruned: every ``prune_every`` batches, successive halving on the prequential
    RMSE of the last ``window`` batches (0: prune_every), keeping ``keep_fraction`` of the live
    models but never fewer than ``min_keep``."""

    ranks: list[int] = Field(default=[5, 10])
    lambdas: list[float] = Field(default=[0.05, 0.1])
    gammas: list[float] = Field(default=[0.05, 0.1])
    prune_every: int = Field(default=10, description="Batches between pruning rounds.")
    keep_fraction: float = Field(default=0.5)
    min_keep: int = Field(default=2)
    window: int = Field(default=0, description="Batches scored per round (0: prune_every).")

    def spec(self) -> GridSpec:
        return GridSpec(ranks=tuple(self.ranks), lambdas=tuple(self.lambdas), gammas=tuple(self.gammas))

    def model_ids(self) -> list[str]:
        return list(grid_params(self.spec()))


# ------------------------------------------------------------------------------- from env
def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off", "")


def grid_from_env() -> GridResource:
    raw = os.environ.get(ENV_GRID, "").strip()
    try:
        settings = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_GRID} must be JSON like {{\"ranks\": [5, 10]}}: {exc}") from exc
    if not isinstance(settings, dict):
        raise ValueError(f"{ENV_GRID} must be a JSON object, got {raw!r}")
    return GridResource(**settings)


def grid_fingerprint(grid: GridResource) -> str:
    """A short hash of the grid settings (the hyperparameter_grid asset's code version)."""
    return hashlib.sha256(json.dumps(grid.model_dump() if hasattr(grid, "model_dump") else dict(grid),
                                     sort_keys=True, default=str).encode()).hexdigest()[:12]


def default_resources() -> dict[str, dg.ConfigurableResource]:
    from als_core.store.warehouse import warehouse_uri

    return {
        "store": StoreResource(
            warehouse_uri=_local_path(warehouse_uri()),
            holdout_fraction=float(os.environ.get(ENV_HOLDOUT, "0.1")),
            artifacts_dir=_local_path(os.environ[ENV_ARTIFACTS]) if os.environ.get(ENV_ARTIFACTS) else "",
        ),
        "engine": EngineResource(name=os.environ.get(ENV_ENGINE, "duckdb"),
                                 spark_master=os.environ.get(ENV_SPARK_MASTER, "local[*]")),
        "landing": LandingResource(path=_local_path(os.environ.get(ENV_LANDING, "./landing")),
                                   min_age_seconds=float(os.environ.get(ENV_MIN_FILE_AGE, "2")),
                                   move_processed=_env_bool(ENV_MOVE_PROCESSED, True)),
        "grid": grid_from_env(),
    }
