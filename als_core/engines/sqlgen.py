"""One SQL source, two dialects.

The files in ``sql/`` are written once, in DuckDB syntax, using six portable functions
whose spelling differs between engines. ``render(sql, dialect, rank)`` parses a file
with sqlglot, replaces those calls by the dialect's expression and prints the query for DuckDB
or Spark (sqlglot also transpiles lambdas, ``range`` vs ``sequence``, casts, and so on).

Inside a step a key's vector is what ``vec_load`` makes of the stored ``FLOAT[]``: Spark's
``ARRAY<DOUBLE>``, and in DuckDB a STRUCT of one DOUBLE field per component (``c1``, ``c2``,
...). DuckDB's hash joins carry a STRUCT as fixed-size columns and a list as a variable-size
payload, and the step joins the key vectors four times (100,000-rating query: 119 -> 105 ms).
So in DuckDB every vector call is written out per component, and a query using one is rendered
for one rank (the model's, or the stored vectors' length when scoring). ``vec_weighted_sum``
is written out per component in Spark too: SQL has no aggregate over arrays, and one SUM per
component keeps the GROUP BY a plain hash aggregate of doubles in either engine.

Every floating-point SUM of the
step is an ``exact_sum``: each term is rounded to a multiple of 2^-30 (~1e-9), so every
partial sum is exact in double precision while it stays below 2^22 in magnitude, and the
total is the same whatever order the engine adds the terms in. Without it a parallel GROUP BY
made the biases differ in the last bits from run to run (DuckDB, 2 threads, 100,000 ratings:
29 of 29 repeats differed), and a serial replay could not reproduce a concurrent one.

=====================================  =============================================  ===========================================
portable call                          DuckDB (per component, for a rank)             Spark
=====================================  =============================================  ===========================================
``vec_load(x)``: stored FLOAT[] as     ``{'c1': CAST(x[1] AS DOUBLE), ...}``          ``CAST(x AS ARRAY<DOUBLE>)``
the step's vector (NULL stays NULL)
``vec_dot(a, b)``                      ``(a.c1 * b.c1 + a.c2 * b.c2 + ...)``          ``aggregate(zip_with(a, b, *), 0D, +)``
``vec_axpby_float(a, x, b, y)``:       ``[TRY_CAST(a*x.c1 + b*y.c1 AS FLOAT), ...]``  ``transform(zip_with(x, y, a*v + b*w),``
a x + b y as FLOAT[]                                                                  ``c -> TRY_CAST(c AS FLOAT))``
``vec_weighted_sum(w, v)``: Σ w v      ``{'c1': exact_sum(w * v.c1), ...}``           ``array(exact_sum(w * element_at(v, 1)), ...)``
(aggregate)
``exact_sum(x)`` (aggregate)           ``SUM(ROUND(x * 2^30) / 2^30)``: order-independent (above), both dialects
``vec_init(seed, side, id, rank, s)``  `als_core.init.init_vectors` as a      the integer hash of `als_core.init` in SQL
                                       scalar function (Arrow UDF)
=====================================  =============================================  ===========================================

``vec_dot`` adds the products left to right in both engines: the same bits. A component of
``vec_axpby_float`` outside FLOAT's range is NULL in DuckDB (TRY_CAST) and infinite in Spark
(which does not check that cast); the caller refuses either before anything is committed.

>>> print(render("SELECT vec_dot(u.v, i.v) AS x FROM u, i", "spark"))
SELECT AGGREGATE(ZIP_WITH(u.v, i.v, (_a, _b) -> _a * _b), CAST(0 AS DOUBLE), (_acc, _x) -> _acc + _x) AS x FROM u, i
>>> print(render("SELECT id, exact_sum(e) AS s FROM t GROUP BY id", "spark"))
SELECT id, SUM(ROUND((e) * 1073741824.0) / 1073741824.0) AS s FROM t GROUP BY id
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import sqlglot
from sqlglot import exp

from als_core import init

DIALECTS = ("duckdb", "spark")

# exact_sum(x): every term rounded to a multiple of 2^-30 (~1e-9) before the SUM, so each
# partial sum is exact in double precision while it stays below 2^22 in magnitude. The total
# then does not depend on the order the engine adds the terms in (thread scheduling, hash
# partitions): the same in every run, with any number of threads, and in both engines.
_GRID = "1073741824.0"  # 2^30
_EXACT_SUM = f"SUM(ROUND(({{0}}) * {_GRID}) / {_GRID})"


class _PerComponent(NamedTuple):
    """A portable call written out once per vector component: ``component`` with ``{c}`` the
    component's 1-based index, the components joined by ``sep`` into ``whole`` at %PARTS%."""
    component: str
    whole: str
    sep: str = ", "


def _field(vector: str) -> str:
    """Component c of a step vector in DuckDB (a STRUCT of fields c1..c<rank>)."""
    return f"STRUCT_EXTRACT({vector}, 'c{{c}}')"


_TEMPLATES = {
    "duckdb": {
        "vec_load": _PerComponent("'c{c}': CAST(({0})[{c}] AS DOUBLE)", "CASE WHEN ({0}) IS NOT NULL THEN {{%PARTS%}} END"),
        "vec_dot": _PerComponent(f"{_field('{0}')} * {_field('{1}')}", "(%PARTS%)", " + "),
        # out of FLOAT's range: NULL (TRY_CAST), refused by the caller
        "vec_axpby_float": _PerComponent(f"TRY_CAST(({{0}}) * {_field('{1}')} + ({{2}}) * {_field('{3}')} AS FLOAT)",
                                         "[%PARTS%]"),
        "vec_weighted_sum": _PerComponent("'c{c}': " + _EXACT_SUM.format(f"({{0}}) * {_field('{1}')}"), "{{%PARTS%}}"),
        "exact_sum": _EXACT_SUM,
    },
    "spark": {
        "vec_load": "CAST({0} AS ARRAY<DOUBLE>)",
        "vec_dot": "aggregate(zip_with({0}, {1}, (_a, _b) -> _a * _b), CAST(0 AS DOUBLE), (_acc, _x) -> _acc + _x)",
        # out of FLOAT's range: infinity (Spark does not check a DOUBLE -> FLOAT cast), refused by the caller
        "vec_axpby_float": "transform(zip_with({1}, {3}, (_v, _w) -> ({0}) * _v + ({2}) * _w), _c -> TRY_CAST(_c AS FLOAT))",
        "vec_weighted_sum": _PerComponent(_EXACT_SUM.format("({0}) * element_at({1}, {c})"), "array(%PARTS%)"),
        "exact_sum": _EXACT_SUM,
    },
}


# Spark computes vec_init in SQL, so unseen keys are initialised on the executors without
# Python. A "let" binding (a one-element array and a lambda) writes a value used twice (h * h)
# once: the SQL stays linear in the number of rounds instead of doubling with each squaring.
_LET = "transform(array({value}), {var} -> {body})[0]"
# one element per component k, from the key's hash bound to _b (see init_vector_sql)
_INIT_COMPONENTS = "transform(sequence(CAST(0 AS BIGINT), CAST({rank} AS BIGINT) - 1), _k -> {init})"


class _HashWriter:
    """Writes the Spark SQL twin of `als_core.init` (every intermediate < 2^62, so BIGINT
    never overflows)."""

    def __init__(self):
        self.n_vars = 0

    def let(self, value: str, body) -> str:
        self.n_vars += 1
        var = f"_h{self.n_vars}"
        return _LET.format(value=value, var=var, body=body(var))

    def mix(self, h: str, x: str) -> str:
        P = init.P
        h = f"(({h} + ({x}) % {P}) % {P} * {init.A1} % {P})"
        h = self.let(h, lambda v: f"(({v} * {v} + {init.C1}) % {P})")
        h = f"(({h} * {init.A2} + {init.C2}) % {P})"
        return self.let(h, lambda v: f"(({v} * {v} + ({x}) % {P}) % {P})")


def init_vector_sql(seed: str, side: str, key: str, rank: str, scale: str) -> str:
    """Spark SQL expression for the initial vector of (seed, side, key) (see `als_core.init`):
    the key's hash is computed once per row and bound to ``_b``; each component k then costs
    one more round (`component_hash`), not the whole hash again."""
    P = init.P
    w = _HashWriter()
    h = f"(CAST({seed} AS BIGINT) % {P} * {init.A3} % {P})"
    h = w.mix(h, f"CAST({side} AS BIGINT)")
    h = w.mix(h, f"CAST({key} AS BIGINT) % 2147483648")
    base = w.mix(h, f"CAST({key} AS BIGINT) DIV 2147483648")
    component = f"({scale}) * (2.0 * (CAST({w.mix('_b', 'CAST(_k AS BIGINT)')} AS DOUBLE) / {P}) - 1.0)"
    return _LET.format(value=base, var="_b", body=_INIT_COMPONENTS.format(rank=rank, init=component))


def _replace_portable(node: exp.Expression, dialect: str, rank: int | None) -> exp.Expression:
    if not isinstance(node, exp.Anonymous) or node.name.lower() not in (*_TEMPLATES[dialect], "vec_init"):
        return node
    name = node.name.lower()
    args = [a.sql(dialect=dialect) for a in node.expressions]
    if name == "vec_init":
        if dialect == "duckdb":  # a scalar function of the DuckDB engine (`duckdb_engine.register_functions`)
            return node
        return sqlglot.parse_one(init_vector_sql(*args), read=dialect)
    template = _TEMPLATES[dialect][name]
    if isinstance(template, _PerComponent):
        if rank is None:
            raise ValueError(f"{name} is written out per component: render the query with the model's rank")
        parts = template.sep.join(template.component.format(*args, c=c) for c in range(1, rank + 1))
        return sqlglot.parse_one(template.whole.format(*args).replace("%PARTS%", parts), read=dialect)
    return sqlglot.parse_one(template.format(*args), read=dialect)


@lru_cache(maxsize=None)
def render(sql: str, dialect: str, rank: int | None = None) -> str:
    """The query in ``sql`` (DuckDB syntax with portable calls) for ``dialect``; ``rank`` is
    needed by queries that use ``vec_weighted_sum``."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {DIALECTS}")
    tree = sqlglot.parse_one(sql, read="duckdb")
    tree = tree.transform(lambda n: _replace_portable(n, dialect, rank))
    return tree.sql(dialect=dialect)


def sql_dir() -> Path:
    """The ``sql/`` folder: inside the installed package, or at the repository root."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("cannot find the sql/ folder of streaming-als")


def load(name: str, dialect: str, rank: int | None = None) -> str:
    """The file ``sql/<name>.sql`` rendered for ``dialect`` (and ``rank``, see `render`)."""
    return render((sql_dir() / f"{name}.sql").read_text(), dialect, rank)
