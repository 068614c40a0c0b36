"""The DuckDB engine: runs the sql/ steps on Arrow relations in an in-process DuckDB.

Stored factors come from the store as Arrow (delta-rs ``to_pyarrow_dataset()`` with file
skipping); DuckDB's ``delta`` extension is never used.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from als_core.engines import sqlgen
from als_core.engines.base import STEP_FILES, ModelSpec, StepResult, batch_relation, score_params


def arrow_of(result) -> pa.Table:
    """A DuckDB result as a pyarrow Table (DuckDB 2 returns a RecordBatchReader)."""
    out = result.arrow()
    return out.read_all() if hasattr(out, "read_all") else pa.table(out)


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None):
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def _run(self, relations: dict[str, pa.Table], steps: list[tuple[str, str]]) -> pa.Table:
        con = self.con.cursor()  # a fresh cursor: its temp objects are private to this call
        try:
            for name, table in relations.items():
                con.register(name, table)
            result = None
            for file, name in steps:
                sql = sqlgen.load(file, "duckdb")
                con.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" AS {sql}')
                result = name
            return arrow_of(con.sql(f'SELECT * FROM "{result}"'))
        finally:
            con.close()

    def step(self, warehouse, model: ModelSpec, batch: pa.Table, new_version: int, batch_seq: int | None,
             clip: tuple[float, float]) -> StepResult:
        ratings = batch_relation(batch)
        stored = warehouse.factor_rows(model.model_id, ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy())
        relations = {
            "stored_factors": stored,
            "batch_ratings": ratings,
            "step_params": model.step_params(new_version, batch_seq),
            "components": model.components(),
        }
        rows = self._run(relations, STEP_FILES)
        prequential = self._run(
            {"stored_factors": stored, "ratings_to_score": ratings, "score_params": score_params(clip)},
            [(STEP_FILES[0][0], "model_state"), ("score_ratings", "scores")],
        )
        return StepResult(rows=rows, prequential=prequential)

    def score(self, warehouse, model_id: str, ratings: pa.Table, version: int | None,
              clip: tuple[float, float]) -> pa.Table:
        relation = batch_relation(ratings)
        stored = warehouse.factor_rows(model_id, relation["user_id"].to_numpy(), relation["item_id"].to_numpy(), version)
        return self._run(
            {"stored_factors": stored, "ratings_to_score": relation, "score_params": score_params(clip)},
            [(STEP_FILES[0][0], "model_state"), ("score_ratings", "scores")],
        )

    def close(self) -> None:
        self.con.close()
