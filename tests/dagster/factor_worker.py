"""Materializes factor_versions in a process of its own (for the concurrency test):
``python factor_worker.py WAREHOUSE`` prints the number of versions the run wrote."""

from __future__ import annotations

import sys


def main(warehouse: str) -> int:
    import dagster as dg

    from dagster_project.assets import factor_versions
    from dagster_project.resources import EngineResource, StoreResource

    with dg.instance_for_test() as instance:
        result = dg.materialize([factor_versions], instance=instance, resources={
            "store": StoreResource(warehouse_uri=warehouse), "engine": EngineResource(name="duckdb")})
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    print(meta["versions_written"].value)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
