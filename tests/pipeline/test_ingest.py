"""Ingestion: bad rows quarantined, unreadable files refused with nothing committed, the
ledger makes ingestion idempotent."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from als_core.pipeline.ingest import ingest_file, ingest_table
from als_core.readers import RatingFileError


def table_versions(warehouse):
    return {n: DeltaTable(warehouse.table_uri(n)).version() for n in ("ratings", "batches", "rejected_ratings")}


def test_good_rows_are_stored_and_bad_rows_quarantined(warehouse, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text("user_id,item_id,rating,timestamp\n1,10,4.0,100\n2,x,3.0,101\n3,11,9.0,102\n4,12,2.5,103\n")
    outcome = ingest_file(warehouse, path, holdout_fraction=0.0)
    assert (outcome.n_rows, outcome.n_rejected, outcome.seq) == (2, 2, 1)
    stored = warehouse.batch_ratings(outcome.batch_id)
    assert sorted(stored["user_id"].to_pylist()) == [1, 4]
    rejected = warehouse.read("rejected_ratings").sort_by("line").to_pylist()
    assert [(r["line"], r["batch_id"]) for r in rejected] == [(3, outcome.batch_id), (4, outcome.batch_id)]
    assert "not an integer" in rejected[0]["reason"] and "outside the scale" in rejected[1]["reason"]
    assert warehouse.ledger().to_pylist()[0]["n_rejected"] == 2


def test_the_same_content_twice_is_a_no_op(warehouse, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "copy of a.csv"
    for p in (a, b):
        p.write_text("user_id,item_id,rating\n1,10,4.0\n2,11,3.0\n")
    first = ingest_file(warehouse, a)
    versions = table_versions(warehouse)
    second = ingest_file(warehouse, b)
    assert second.already_ingested and second.batch_id == first.batch_id and second.seq == first.seq
    assert table_versions(warehouse) == versions
    assert warehouse.read("ratings").num_rows == 2


def test_an_unreadable_file_raises_and_commits_nothing(warehouse, tmp_path):
    bad = tmp_path / "not ratings.bin"
    bad.write_bytes(b"\x00\x01\x02binary\x00")
    versions = table_versions(warehouse)
    with pytest.raises(RatingFileError, match="not ratings.bin"):
        ingest_file(warehouse, bad)
    assert table_versions(warehouse) == versions


def test_a_crash_after_the_ratings_commit_is_completed_without_duplicates(warehouse, shipped):
    """Simulate a crash after the ratings were committed but before the ledger row: the rerun
    sees the app transaction of the batch, skips the ratings and writes only the ledger."""
    batch = shipped.slice(0, 300)
    outcome = ingest_table(warehouse, batch, source="first", holdout=False)
    # Recreate the crash state in a second warehouse: ratings committed, no ledger row.
    from als_core.store.warehouse import Warehouse

    crashed = Warehouse(warehouse.uri + "-crashed")
    crashed.ensure_tables()
    rows = warehouse.read("ratings")
    crashed.append("ratings", rows, txn=(outcome.batch_id, 1))
    again = ingest_table(crashed, batch, source="rerun", holdout=False)
    assert again.batch_id == outcome.batch_id and not again.already_ingested
    assert crashed.read("ratings").num_rows == 300  # not 600
    assert crashed.ledger().num_rows == 1


def test_holdout_flags_follow_the_pair_hash(warehouse, shipped):
    batch = shipped.slice(0, 5000)
    ingest_table(warehouse, batch, source="b", holdout_fraction=0.2)
    stored = warehouse.read("ratings")
    share = pc.mean(stored["holdout"].cast("int8")).as_py()
    assert 0.17 < share < 0.23
    # Same pairs in another order and another batch: same flags.
    other = ingest_table(warehouse, batch.take(list(reversed(range(5000)))), source="reversed", holdout_fraction=0.2)
    again = warehouse.batch_ratings(other.batch_id)
    flags = {(u, i): h for u, i, h in zip(stored["user_id"].to_pylist(), stored["item_id"].to_pylist(), stored["holdout"].to_pylist())}
    assert all(flags[(u, i)] == h for u, i, h in zip(again["user_id"].to_pylist(), again["item_id"].to_pylist(), again["holdout"].to_pylist()))
