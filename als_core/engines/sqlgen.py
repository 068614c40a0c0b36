"""One SQL source, two dialects.

The files in ``sql/`` are written once, in DuckDB syntax, using six portable vector
functions whose spelling differs between engines. ``render(sql, dialect, rank)`` parses a file
with sqlglot, replaces those calls by the dialect's expression and prints the query for DuckDB
or Spark (sqlglot also transpiles lambdas, ``range`` vs ``sequence``, casts, and so on).
``vec_sum`` is written out per component, so a query using it is rendered for one rank (the
model's): SQL has no aggregate over arrays, and one SUM per component keeps the GROUP BY a
plain hash aggregate of doubles in either engine.

=====================================  ===========================================  ==========================================
portable call                          DuckDB                                       Spark
=====================================  ===========================================  ==========================================
``vec_dot(a, b)``                      ``list_dot_product(a, b)``                   ``aggregate(zip_with(a, b, *), 0D, +)``
``vec_get(v, k)`` (k from 0)           ``v[k + 1]``                                 ``element_at(v, CAST(k + 1 AS INT))``
``vec_collect(x, k)`` (aggregate)      ``list(x ORDER BY k)``                       ``transform(array_sort(collect_list(struct(k, x))), s -> s.x)``
``vec_axpby(a, x, b, y)``: a x + b y   ``list_transform(x, lambda v, i: a*v + b*y[i])``  ``zip_with(x, y, (v, w) -> a*v + b*w)``
``vec_sum(v)`` (aggregate, per rank)   ``[SUM(v[1]), ..., SUM(v[rank])]``             ``array(SUM(element_at(v, 1)), ...)``
``vec_init(seed, side, id, rank, s)``  the integer hash of `als_core.init`, one element per component
=====================================  ===========================================  ==========================================

>>> print(render("SELECT vec_get(v, c.k) AS x FROM t, c", "spark"))
SELECT ELEMENT_AT(v, CAST((c.k) + 1 AS INT)) AS x FROM t, c
>>> print(render("SELECT id, vec_sum(g) AS s FROM t GROUP BY id", "duckdb", rank=2))
SELECT id, [SUM((g)[1]), SUM((g)[2])] AS s FROM t GROUP BY id
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlglot
from sqlglot import exp

from als_core import init

DIALECTS = ("duckdb", "spark")

_TEMPLATES = {
    "duckdb": {
        "vec_dot": "list_dot_product({0}, {1})",
        "vec_get": "({0})[({1}) + 1]",
        "vec_collect": "list({0} ORDER BY {1})",
        "vec_axpby": "list_transform({1}, lambda _v, _i: ({0}) * _v + ({2}) * ({3})[_i])",
        "vec_sum": "SUM(({0})[{k} + 1])",  # per component, inside [...]
    },
    "spark": {
        "vec_dot": "aggregate(zip_with({0}, {1}, (_a, _b) -> _a * _b), CAST(0 AS DOUBLE), (_acc, _x) -> _acc + _x)",
        "vec_get": "element_at({0}, CAST(({1}) + 1 AS INT))",  # Spark's index argument is INT
        "vec_collect": "transform(array_sort(collect_list(struct({1} AS _k, {0} AS _v))), _s -> _s._v)",
        "vec_axpby": "zip_with({1}, {3}, (_v, _w) -> ({0}) * _v + ({2}) * _w)",
        "vec_sum": "SUM(element_at({0}, {k} + 1))",  # per component, inside array(...)
    },
}


# "let" binding, so a value used twice (h * h) is written once: the SQL stays linear in the
# number of rounds instead of doubling with each squaring.
_LET = {
    "duckdb": "list_transform([{value}], lambda {var}: {body})[1]",
    "spark": "transform(array({value}), {var} -> {body})[0]",
}
_INT_DIV = {"duckdb": "//", "spark": "DIV"}
# vec_init: one element per component k, from the key's hash bound to _b (see init_vector_sql).
_INIT_COMPONENTS = {
    "duckdb": "list_transform(range(CAST({rank} AS BIGINT)), lambda _k: {init})",
    "spark": "transform(sequence(CAST(0 AS BIGINT), CAST({rank} AS BIGINT) - 1), _k -> {init})",
}
_ARRAY = {"duckdb": "[{}]", "spark": "array({})"}


class _HashWriter:
    """Writes the SQL twin of `als_core.init` for one dialect (every intermediate < 2^62, so
    BIGINT never overflows)."""

    def __init__(self, dialect: str):
        self.dialect = dialect
        self.n_vars = 0

    def let(self, value: str, body) -> str:
        self.n_vars += 1
        var = f"_h{self.n_vars}"
        return _LET[self.dialect].format(value=value, var=var, body=body(var))

    def mix(self, h: str, x: str) -> str:
        P = init.P
        h = f"(({h} + ({x}) % {P}) % {P} * {init.A1} % {P})"
        h = self.let(h, lambda v: f"(({v} * {v} + {init.C1}) % {P})")
        h = f"(({h} * {init.A2} + {init.C2}) % {P})"
        return self.let(h, lambda v: f"(({v} * {v} + ({x}) % {P}) % {P})")


def init_vector_sql(seed: str, side: str, key: str, rank: str, scale: str, dialect: str) -> str:
    """SQL expression for the initial vector of (seed, side, key) (see `als_core.init`): the
    key's hash is computed once per row and bound to ``_b``; each component k then costs one
    more round (`component_hash`), not the whole hash again."""
    P = init.P
    w = _HashWriter(dialect)
    h = f"(CAST({seed} AS BIGINT) % {P} * {init.A3} % {P})"
    h = w.mix(h, f"CAST({side} AS BIGINT)")
    h = w.mix(h, f"CAST({key} AS BIGINT) % 2147483648")
    base = w.mix(h, f"CAST({key} AS BIGINT) {_INT_DIV[dialect]} 2147483648")
    component = f"({scale}) * (2.0 * (CAST({w.mix('_b', 'CAST(_k AS BIGINT)')} AS DOUBLE) / {P}) - 1.0)"
    return _LET[dialect].format(value=base, var="_b", body=_INIT_COMPONENTS[dialect].format(rank=rank, init=component))


def _replace_portable(node: exp.Expression, dialect: str, rank: int | None) -> exp.Expression:
    if not isinstance(node, exp.Anonymous) or node.name.lower() not in (*_TEMPLATES[dialect], "vec_init"):
        return node
    name = node.name.lower()
    args = [a.sql(dialect=dialect) for a in node.expressions]
    if name == "vec_init":
        return sqlglot.parse_one(init_vector_sql(*args, dialect=dialect), read=dialect)
    if name == "vec_sum":
        if rank is None:
            raise ValueError("vec_sum is written out per component: render the query with the model's rank")
        parts = ", ".join(_TEMPLATES[dialect][name].format(*args, k=k) for k in range(rank))
        return sqlglot.parse_one(_ARRAY[dialect].format(parts), read=dialect)
    text = _TEMPLATES[dialect][name].format(*args)
    return sqlglot.parse_one(text, read=dialect)


@lru_cache(maxsize=None)
def render(sql: str, dialect: str, rank: int | None = None) -> str:
    """The query in ``sql`` (DuckDB syntax with portable calls) for ``dialect``; ``rank`` is
    needed by queries that use ``vec_sum``."""
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
