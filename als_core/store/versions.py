"""Model versions in the factor store: state as of a version, rollback, compaction.

A model's state at version v is, for each (side, id), its row with the largest version <= v;
a row with NULL bias is a tombstone (the key did not exist at that version).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from als_core.model import FactorModel
from als_core.store.schemas import FACTORS, check_model_id
from als_core.store.warehouse import StoreError, Warehouse, now_utc, retry_commit, writer_properties


def latest_rows(rows: pa.Table) -> pa.Table:
    """For each (side, id): the row with the largest version (tombstones kept)."""
    if rows.num_rows == 0:
        return rows
    side = rows["side"].to_numpy(zero_copy_only=False).astype(str)
    ids = rows["id"].to_numpy()
    version = rows["version"].to_numpy()
    order = np.lexsort((version, ids, side))
    s, i = side[order], ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (s[1:] != s[:-1]) | (i[1:] != i[:-1])
    return rows.take(order[last])


def model_state(warehouse: Warehouse, model_id: str, version: int | None = None) -> pa.Table:
    """Current rows (no tombstones) of a model as of ``version`` (default: latest)."""
    rows = latest_rows(warehouse.factor_rows(model_id, version=version))
    return rows.filter(pc.is_valid(rows["bias"]))


def to_factor_model(state: pa.Table) -> FactorModel:
    """A `FactorModel` (numpy) from a model's current rows."""
    def side(name):
        t = state.filter(pc.equal(state["side"], name)).sort_by("id")
        vectors = t["vector"].combine_chunks()
        rank = len(vectors[0]) if len(vectors) else 0
        flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float64)
        return (t["id"].to_numpy().astype(np.int64), t["bias"].to_numpy(), flat.reshape(len(t), rank),
                t["n"].to_numpy().astype(np.int64))
    g = state.filter(pc.equal(state["side"], "global")).to_pylist()
    mu, n = (g[0]["bias"], g[0]["n"]) if g else (0.0, 0)
    u_ids, u_b, u_v, u_n = side("user")
    i_ids, i_b, i_v, i_n = side("item")
    rank = max(u_v.shape[1], i_v.shape[1])
    return FactorModel(mu=float(mu), n_ratings=int(n), user_ids=u_ids, user_bias=u_b, user_factors=u_v.reshape(len(u_ids), rank),
                       item_ids=i_ids, item_bias=i_b, item_factors=i_v.reshape(len(i_ids), rank),
                       user_counts=u_n, item_counts=i_n)


def rollback(warehouse: Warehouse, model_id: str, to_version: int) -> int:
    """Restore the state of ``to_version`` as a new version (history is kept). Keys created
    after ``to_version`` get tombstones. Batches applied since are not re-applied: the
    model's applied-batch marker stays where it is. Returns the new version."""
    check_model_id(model_id)
    with warehouse.lock(f"model-{model_id}"):
        current = warehouse.current_version(model_id)
        if not 1 <= to_version <= current:
            raise StoreError(f"model {model_id!r} has versions 1..{current}; cannot roll back to {to_version}")
        if to_version == current:
            raise StoreError(f"model {model_id!r} is already at version {to_version}")
        new_version = current + 1
        now = latest_rows(warehouse.factor_rows(model_id))
        old = latest_rows(warehouse.factor_rows(model_id, version=to_version))
        changed = now.filter(pc.greater(now["version"], to_version))  # keys touched since
        keys_old = {(s, i) for s, i in zip(old["side"].to_pylist(), old["id"].to_pylist())}
        old_by_key = {(r["side"], r["id"]): r for r in old.to_pylist()}
        rows = []
        for r in changed.to_pylist():
            key = (r["side"], r["id"])
            if key in keys_old:
                rows.append({**old_by_key[key], "version": new_version, "batch_seq": None})
            else:  # did not exist at to_version: tombstone
                rows.append({"side": r["side"], "id": r["id"], "version": new_version, "n": 0, "bias": None,
                             "vector": None, "batch_seq": None})
        table = pa.Table.from_pylist([{**r, "model_id": model_id} for r in rows], schema=FACTORS)
        warehouse.commit_factor_version(model_id, table, seq=None)
    return new_version


def compact_factors(warehouse: Warehouse, model_id: str, row_group_rows: int = 16_384, locked: bool = False) -> dict:
    """Rewrite a model's partition of ``factors`` to its latest row per key (plus every
    global row: the version history), sorted by (side, id) so each row group covers a narrow
    id range and readers skip what a batch does not touch. Older rows stay reachable through
    Delta time travel (recorded in ``compactions``) until a vacuum."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    check_model_id(model_id)

    def compacted() -> tuple[pa.Table, dict]:
        """The rows to keep and the record of this compaction."""
        delta_version_before = warehouse.table("factors").version()
        full = warehouse.read("factors", filter=pc.field("model_id") == model_id)
        is_global = pc.equal(full["side"], "global")
        keep = pa.concat_tables([full.filter(is_global), latest_rows(full.filter(pc.invert(is_global)))])
        keep = keep.sort_by([("side", "ascending"), ("id", "ascending"), ("version", "ascending")])
        return keep, {"model_id": model_id, "compacted_version": warehouse.current_version(model_id),
                      "delta_version_before": delta_version_before, "rows_before": full.num_rows,
                      "rows_after": keep.num_rows, "compacted_at": now_utc()}

    def rewrite(keep: pa.Table) -> None:
        applied = warehouse.applied_seq(model_id)
        props = CommitProperties(app_transactions=[Transaction(app_id=model_id, version=applied)]) if applied else None
        write_deltalake(warehouse.table_uri("factors"), keep.select(FACTORS.names).cast(FACTORS), mode="overwrite",
                        predicate=f"model_id = '{model_id}'",  # validated id: safe alphabet only
                        partition_by=["model_id"], commit_properties=props, storage_options=warehouse.storage_options,
                        writer_properties=writer_properties("factors", max_row_group_size=row_group_rows))

    with nullcontext() if locked else warehouse.lock(f"model-{model_id}"):
        if warehouse.table("factors") is None:
            return {"model_id": model_id, "rows_before": 0, "rows_after": 0}
        keep, record = compacted()
        # The record is committed BEFORE the rewrite: a crash between the two must not leave a
        # compaction that time travel does not know about (versions older than it would then be
        # read from the compacted table and miss rows). A record whose rewrite never happened
        # only sends such reads back to a Delta version that still holds every row.
        warehouse.append("compactions", pa.Table.from_pylist([record]))
        first = [keep]
        retry_commit(lambda: rewrite(first.pop() if first else compacted()[0]))  # a retry re-reads
    return record
