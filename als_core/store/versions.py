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


# A tiered compaction merges the files written since the last full one while they hold fewer
# rows than this fraction of the full one's; past it, the whole model is rewritten. So a merge
# rewrites at most about half the model's rows, and a full rewrite comes at the latest once the
# tail is half the model (10M users, 100,000-rating batches, compacted every 50 versions: a
# tail of ~3.1M rows, every other compaction is full).
TAIL_FRACTION = 0.5


def split_base_tail(actions: pa.Table, model_id: str) -> tuple[int, int, int, int] | None:
    """How a model's ``factors`` files divide, from the Delta statistics (``actions``: the
    table's add actions; no data file is opened): ``(top, base_rows, tail_files, tail_rows)``.
    The base is the output of the last full compaction (or the first version's files, before
    any): every global row is kept by compaction, so the file holding the model's first
    version holds the base's newest global row, and ``top``, the base's last version, is that
    file's largest version. The tail is every file whose rows all have versions above ``top``
    (one per version since, or a tiered compaction's merged file). None when a file has no
    statistics, or holds versions on both sides of ``top``: only a full compaction is safe."""
    needed = {"partition.model_id", "min.version", "max.version", "num_records"}
    if not needed <= set(actions.column_names):
        return None
    mine = actions.filter(pc.equal(actions["partition.model_id"], model_id))
    if mine.num_rows == 0 or any(mine[c].null_count for c in ("min.version", "max.version", "num_records")):
        return None
    lo, hi = mine["min.version"].to_numpy(), mine["max.version"].to_numpy()
    n = mine["num_records"].to_numpy()
    top = int(hi[lo == lo.min()].max())
    base, tail = hi <= top, lo > top
    if not np.all(base | tail):
        return None
    return top, int(n[base].sum()), int(tail.sum()), int(n[tail].sum())


def compact_factors(warehouse: Warehouse, model_id: str, row_group_rows: int = 16_384, locked: bool = False,
                    full: bool | None = None, tail_fraction: float = TAIL_FRACTION) -> dict:
    """Rewrite a model's partition of ``factors`` to its latest row per key (plus every
    global row: the version history), sorted by (side, id) so each row group covers a narrow
    id range and readers skip what a batch does not touch. Older rows stay reachable through
    Delta time travel (recorded in ``compactions``) until a vacuum.

    ``full=None`` (default) chooses: while the files written since the last full compaction
    (the tail, `split_base_tail`) hold fewer than ``tail_fraction`` x the rows of its output
    (the base), only the tail is rewritten, into one file of its latest rows per key: O(rows
    since), and the base's files stay as they are (and in the DuckDB engine's cache). A full
    rewrite of a 10M-user model takes 20-30 s here, and every engine cache must then read
    the whole model again. The default also rewrites everything when the base is not the output
    of a recorded compaction. ``full=True`` always rewrites everything; ``full=False``
    rewrites only the tail unless the statistics do not allow it. The returned record says which
    (``kind``: "full", "tiered", or "none": at most one file since the last compaction); its
    row counts are those of the part rewritten."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    check_model_id(model_id)

    def plan() -> tuple[str, int | None]:
        """("full" | "tiered" | "none", the base's last version for a tiered one)."""
        if full:
            return "full", None
        split = split_base_tail(warehouse.add_actions("factors", warehouse.table("factors")), model_id)
        if split is None:
            return "full", None
        top, base_rows, tail_files, tail_rows = split
        if full is None:
            done = warehouse.read("compactions", filter=(pc.field("model_id") == model_id)
                                  & (pc.field("compacted_version") == top))
            if done.num_rows == 0:  # the base is not a compaction's output (a bootstrap's appends, say)
                return "full", None
            if tail_files <= 1:
                return "none", top
            if tail_rows > tail_fraction * base_rows:
                return "full", None
        return ("tiered" if tail_files else "none"), top

    def compacted(above: int | None) -> tuple[pa.Table, dict]:
        """The rows to keep (of versions above ``above``, all if None) and the record."""
        delta_version_before = warehouse.table("factors").version()
        wanted = pc.field("model_id") == model_id
        if above is not None:
            wanted = wanted & (pc.field("version") > above)
        rows = warehouse.read("factors", filter=wanted)
        is_global = pc.equal(rows["side"], "global")
        keep = pa.concat_tables([rows.filter(is_global), latest_rows(rows.filter(pc.invert(is_global)))])
        keep = keep.sort_by([("side", "ascending"), ("id", "ascending"), ("version", "ascending")])
        return keep, {"model_id": model_id, "compacted_version": warehouse.current_version(model_id),
                      "delta_version_before": delta_version_before, "rows_before": rows.num_rows,
                      "rows_after": keep.num_rows, "compacted_at": now_utc()}

    def rewrite(keep: pa.Table, above: int | None) -> None:
        applied = warehouse.applied_seq(model_id)
        props = CommitProperties(app_transactions=[Transaction(app_id=model_id, version=applied)]) if applied else None
        predicate = f"model_id = '{model_id}'"  # validated id: safe alphabet only
        if above is not None:  # the base's files hold no such row: delta-rs leaves them untouched
            predicate += f" AND version > {int(above)}"
        write_deltalake(warehouse.table_uri("factors"), keep.select(FACTORS.names).cast(FACTORS), mode="overwrite",
                        predicate=predicate, partition_by=["model_id"], commit_properties=props,
                        storage_options=warehouse.storage_options,
                        writer_properties=writer_properties("factors", max_row_group_size=row_group_rows))

    with nullcontext() if locked else warehouse.lock(f"model-{model_id}"):
        if warehouse.table("factors") is None:
            return {"model_id": model_id, "kind": "none", "rows_before": 0, "rows_after": 0}
        kind, top = plan()
        if kind == "none":
            return {"model_id": model_id, "kind": kind, "compacted_version": warehouse.current_version(model_id),
                    "rows_before": 0, "rows_after": 0}
        above = top if kind == "tiered" else None
        keep, record = compacted(above)
        # The record is committed BEFORE the rewrite: a crash between the two must not leave a
        # compaction that time travel does not know about (versions older than it would then be
        # read from the compacted table and miss rows). A record whose rewrite never happened
        # only sends such reads back to a Delta version that still holds every row.
        warehouse.append("compactions", pa.Table.from_pylist([record]))
        first = [keep]
        retry_commit(lambda: rewrite(first.pop() if first else compacted(above)[0], above))  # a retry re-reads
    return {**record, "kind": kind}
