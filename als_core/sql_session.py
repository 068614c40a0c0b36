"""DuckDB over the factor store, for analysts: the tables as views plus the macros of
``sql/views`` (current_factors, predict, recommend, model_versions, evaluation_history).

>>> import tempfile
>>> with sql_session(tempfile.mkdtemp()) as con:
...     con.execute("SELECT count(*) FROM model_versions").fetchone()
(0,)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import duckdb

from als_core.engines.sqlgen import sql_dir
from als_core.store.schemas import TABLES
from als_core.store.warehouse import Warehouse


@contextmanager
def sql_session(warehouse: Warehouse | str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with every store table registered (Arrow datasets from delta-rs:
    reads are lazy and skip files by statistics) and the view macros created."""
    warehouse = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    warehouse.ensure_tables()
    con = duckdb.connect()
    datasets = {}
    try:
        for name in TABLES:
            dt = warehouse.table(name)
            datasets[name] = dt.to_pyarrow_dataset()
            con.register(name, datasets[name])
        for path in sorted((sql_dir() / "views").glob("*.sql")):
            con.execute(path.read_text())
        yield con
    finally:
        con.close()
        datasets.clear()  # drop delta-rs datasets before interpreter exit (see docs/architecture.md)
