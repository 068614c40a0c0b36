"""Fixtures for the Dagster tests: real in-process Dagster (an ephemeral instance), real Delta
tables in tmp_path, the shipped MovieLens sample. `Pipeline` plays the daemon's part: it
ticks the sensor, applies its dynamic-partition requests and executes its run requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from als_core.pipeline.replay import drop_file
from als_core.store.schemas import TABLES
from als_core.store.warehouse import Warehouse
from dagster_project.assets import ALL_ASSETS
from dagster_project.checks import ALL_CHECKS
from dagster_project.resources import EngineResource, GridResource, LandingResource, StoreResource
from dagster_project.sensors import new_rating_files

# A small grid: 4 models, pruned every 2 batches down to (never fewer than) 2.
TEST_GRID = dict(ranks=[4, 8], lambdas=[0.05], gammas=[0.01, 0.1], prune_every=2, keep_fraction=0.5, min_keep=2)


@dataclass
class Pipeline:
    root: Path
    instance: dg.DagsterInstance
    resources: dict
    cursor: str | None = None
    ratings: object = None
    results: list = field(default_factory=list)

    @property
    def landing(self) -> Path:
        return Path(self.resources["landing"].path)

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.resources["store"].warehouse_uri)

    def drop(self, k: int, name: str | None = None, size: int = 1000) -> Path:
        """Micro-batch k (1-based) of the shipped data, written with drop_file."""
        return drop_file(self.ratings.slice((k - 1) * size, size), self.landing, name or f"batch-{k:03d}.csv")

    def tick(self, cursor: str | None | bool = True) -> dg.SensorResult:
        """One sensor evaluation (cursor=True: the previous tick's cursor), its dynamic
        partitions added the way the daemon does."""
        context = dg.build_sensor_context(instance=self.instance, resources=self.resources,
                                          cursor=self.cursor if cursor is True else cursor or None)
        result = new_rating_files(context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        return result

    def run(self, keys, partition_key: str | None = None, tags=None, raise_on_error: bool = True, run_config=None):
        """A run of these assets (and their checks), recorded with its asset selection the way
        the daemon launches runs, which the automation conditions read."""
        defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, resources=self.resources,
                              executor=dg.in_process_executor)
        job = defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(instance=self.instance, partition_key=partition_key, tags=tags,
                                      asset_selection=[dg.AssetKey(k) if isinstance(k, str) else k for k in keys],
                                      raise_on_error=raise_on_error, run_config=run_config)

    def execute(self, request: dg.RunRequest, raise_on_error: bool = True):
        """Execute a sensor's run request as the daemon would (its asset selection, partition, tags)."""
        return self.run(request.asset_selection, request.partition_key, request.tags, raise_on_error)

    def run_requests(self, result: dg.SensorResult, raise_on_error: bool = True) -> list:
        return [self.execute(r, raise_on_error) for r in result.run_requests]

    def ingest(self, partition_key: str, tags=None, raise_on_error: bool = True):
        """A run of one rating_batches partition only (like a manual run from the UI)."""
        if partition_key not in self.instance.get_dynamic_partitions("rating_files"):
            self.instance.add_dynamic_partitions("rating_files", [partition_key])
        return self.run(["rating_batches"], partition_key, tags, raise_on_error)

    def use_grid(self, **settings) -> None:
        """A smaller grid for tests that are not about the grid (fewer models: faster)."""
        self.resources["grid"] = GridResource(**{**TEST_GRID, **settings})

    def versions_per_model(self) -> dict[str, int]:
        wh = self.warehouse
        return {m: len(wh.model_versions(m)) for m in wh.models()["model_id"].to_pylist()}

    def delta_versions(self) -> dict[str, int | None]:
        """The Delta version of every store table (None: not created)."""
        wh = self.warehouse
        return {name: (None if wh.table(name) is None else wh.table(name).version()) for name in TABLES}

    def materialize(self, *keys: str, raise_on_error: bool = True, run_config=None):
        return self.run(keys, raise_on_error=raise_on_error, run_config=run_config)


@pytest.fixture
def pipeline(tmp_path, shipped):
    resources = {
        "store": StoreResource(warehouse_uri=str(tmp_path / "warehouse")),
        "engine": EngineResource(name="duckdb"),
        "landing": LandingResource(path=str(tmp_path / "landing"), min_age_seconds=0.0),
        "grid": GridResource(**TEST_GRID),
    }
    with dg.instance_for_test() as instance:
        yield Pipeline(tmp_path, instance, resources, ratings=shipped)
