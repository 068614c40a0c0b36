"""The DuckDB engine: runs the sql/ steps on Arrow relations in an in-process DuckDB.

Stored factors come from the store as Arrow (delta-rs ``to_pyarrow_dataset()`` with file
skipping); DuckDB's ``delta`` extension is never used.
"""

from __future__ import annotations

from functools import lru_cache

import duckdb
import pyarrow as pa

from als_core.engines import sqlgen
from als_core.engines.base import SCORE_FILES, STEP_FILES, ModelSpec, StepResult, batch_relation, score_params


def arrow_of(result) -> pa.Table:
    """A DuckDB result as a pyarrow Table (DuckDB 2 returns a RecordBatchReader)."""
    out = result.arrow()
    return out.read_all() if hasattr(out, "read_all") else pa.table(out)


@lru_cache(maxsize=None)
def _chained(steps: tuple[tuple[str, str], ...]) -> str:
    ctes = ",\n".join(f'"{name}" AS MATERIALIZED (\n{sqlgen.load(file, "duckdb")}\n)' for file, name in steps)
    return f'WITH {ctes}\nSELECT * FROM "{steps[-1][1]}"'


def chained_query(steps: list[tuple[str, str]]) -> str:
    return _chained(tuple(steps))


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None):
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def _run(self, relations: dict[str, pa.Table], queries: list[list[tuple[str, str]]]) -> list[pa.Table]:
        """Run each chain of step files as one query: each file becomes a materialized CTE
        named after the relation it defines (one round trip; DuckDB plans the chain at once)."""
        con = self.con.cursor()  # a fresh cursor: registrations are private to this call
        try:
            for name, table in relations.items():
                con.register(name, table)
            return [arrow_of(con.sql(chained_query(steps))) for steps in queries]
        finally:
            con.close()

    def step(self, warehouse, model: ModelSpec, batch: pa.Table, new_version: int, batch_seq: int | None,
             clip: tuple[float, float]) -> StepResult:
        ratings = batch_relation(batch)
        stored = warehouse.factor_rows(model.model_id, ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy())
        relations = {
            "stored_factors": stored,
            "batch_ratings": ratings,
            "ratings_to_score": ratings,
            "step_params": model.step_params(new_version, batch_seq),
            "components": model.components(),
            "score_params": score_params(clip),
        }
        rows, prequential = self._run(relations, [STEP_FILES, SCORE_FILES])
        return StepResult(rows=rows, prequential=prequential)

    def score(self, warehouse, model_id: str, ratings: pa.Table, version: int | None,
              clip: tuple[float, float]) -> pa.Table:
        relation = batch_relation(ratings)
        stored = warehouse.factor_rows(model_id, relation["user_id"].to_numpy(), relation["item_id"].to_numpy(), version)
        return self._run(
            {"stored_factors": stored, "ratings_to_score": relation, "score_params": score_params(clip)}, [SCORE_FILES]
        )[0]

    def close(self) -> None:
        self.con.close()
