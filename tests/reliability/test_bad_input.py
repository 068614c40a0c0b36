"""Bad input through the INGEST path (issue 7.1): each file of a generated corpus is either
ingested with every bad row quarantined in ``rejected_ratings`` (and every good row in
``ratings``), or refused with a RatingFileError naming the file and nothing committed.
``tests/test_readers.py`` covers the reader alone; these tests check what reaches the store.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from als_core.pipeline.ingest import ingest_file
from als_core.readers import RatingFileError
from als_core.store.warehouse import Warehouse
from reliability_helpers import table_versions

H = "user_id,item_id,rating,timestamp\n"
INGEST_TABLES = ("ratings", "rejected_ratings", "batches")


def stored(warehouse: Warehouse, batch_id: str) -> tuple[list[tuple], list[tuple]]:
    """(ratings as (user, item, rating, rated_at) sorted, rejects as (line, reason) sorted) of a batch."""
    ratings = warehouse.batch_ratings(batch_id)
    rows = sorted(zip(*(ratings[c].to_pylist() for c in ("user_id", "item_id", "rating", "rated_at"))))
    rejected = warehouse.read("rejected_ratings", filter=pc.field("batch_id") == batch_id)
    return rows, sorted(zip(rejected["line"].to_pylist(), rejected["reason"].to_pylist()))


def ingest_ok(warehouse: Warehouse, path: Path, **kw):
    outcome = ingest_file(warehouse, path, holdout_fraction=0.0, **kw)
    rows, rejects = stored(warehouse, outcome.batch_id)
    ledger = warehouse.batch_record(outcome.batch_id)
    assert (ledger["n_rows"], ledger["n_rejected"]) == (outcome.n_rows, outcome.n_rejected) == (len(rows), len(rejects))
    assert ledger["source"] == str(path)
    return outcome, rows, rejects


def assert_refused(warehouse: Warehouse, path: Path, message: str) -> None:
    before = table_versions(warehouse, INGEST_TABLES)
    with pytest.raises(RatingFileError) as info:
        ingest_file(warehouse, path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    assert table_versions(warehouse, INGEST_TABLES) == before, "a refused file committed something"


# ------------------------------------------------------------------------ refused files
REFUSED = {
    "empty.csv": (b"", "is empty"),
    "blank.csv": (b"  \n\n \n", "is empty"),
    "semicolons.csv": (b"user_id;item_id;rating;timestamp\n1;2;3;4\n", "cannot recognise line 1"),
    "no-item-column.csv": (b"user_id,rating\n1,4\n", "lacks item_id"),
    "utf16-without-bom.csv": ((H + "1,1,3,4\n").encode("utf-16-le"), "binary content"),
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
    "latin1.csv": (H.encode() + "1,1,3,4 caf\xe9\n".encode("latin-1"), "not UTF-8 on line 2"),
    "truncated.csv.gz": (None, "intact gzip"),
    "parquet-without-rating.parquet": (None, "lack rating"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unreadable_files_are_refused_naming_the_file_and_nothing_is_committed(warehouse, tmp_path, name):
    content, message = REFUSED[name]
    path = tmp_path / name
    if name == "truncated.csv.gz":
        lines = "".join(f"{u},{u * 7 % 1000},{(u % 9 + 1) / 2},{1_000_000 + u}\n" for u in range(5000))
        path.write_bytes(gzip.compress((H + lines).encode())[:-4000])
    elif name.endswith(".parquet"):
        pq.write_table(pa.table({"user_id": [1], "item_id": [2], "score": [3.0]}), path)
    else:
        path.write_bytes(content)
    assert_refused(warehouse, path, message)


def test_a_directory_or_a_dangling_symlink_where_a_file_is_expected(warehouse, tmp_path):
    folder = tmp_path / "ratings.csv"
    folder.mkdir()
    assert_refused(warehouse, folder, "is a directory")
    link = tmp_path / "to-folder.csv"
    link.symlink_to(folder)
    assert_refused(warehouse, link, "is a directory")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere.csv")
    assert_refused(warehouse, dangling, "no such file")


def test_a_symlink_to_a_rating_file_is_ingested_once_by_content(warehouse, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text(H + "1,10,4.0,100\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    first, rows, _ = ingest_ok(warehouse, link)
    assert rows == [(1, 10, 4.0, 100)]
    again = ingest_file(warehouse, target)
    assert again.already_ingested and again.batch_id == first.batch_id


# ------------------------------------------------------------------------ ingested files
GOOD = [(1, 10, 4.0, 100), (2, 11, 0.5, 101), (3, 12, 5.0, 102), (9223372036854775807, 13, 3.5, 103)]
GOOD_TEXT = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in GOOD)


def test_a_partly_bad_file_stores_every_good_row_and_quarantines_every_bad_one(warehouse, tmp_path):
    """Every kind of bad row in one file, between good rows: the good rows all arrive, each
    bad row is in rejected_ratings with its line number and reason, and
    stored + rejected == data lines."""
    bad = [
        ("1;10;4.0;100", "expected 4 fields"),  # wrong delimiter on one line
        ("4,20,3.0,100,extra", "found 5"),  # extra column
        ("5,21,3.0", "found 3"),  # missing column
        ("x,22,3.0,100", "user_id 'x' is not an integer"),
        ("6,1.5,3.0,100", "item_id '1.5' is not an integer"),
        ("-7,23,3.0,100", "negative user_id '-7'"),
        ("8,-24,3.0,100", "negative item_id '-24'"),
        ("9223372036854775808,25,3.0,100", "exceeds the int64 range"),
        ("10,99999999999999999999999,3.0,100", "exceeds the int64 range"),
        ("11,26,nan,100", "is not finite"),
        ("12,27,inf,100", "is not finite"),
        ("13,28,-Infinity,100", "is not finite"),
        ("14,29,1e999,100", "is not finite"),
        ("15,30,5.5,100", "outside the scale"),
        ("16,31,0,100", "outside the scale"),
        ("17,32,1e6,100", "outside the scale"),
        ("18,33,four,100", "is not a number"),
        ("19,34,,100", "missing rating"),
        (",35,3.0,100", "missing user_id"),
        ("20,36,3.0,-5", "negative timestamp"),
        ("", "empty line"),
        ("21,37,3.0,1.5", "timestamp '1.5' is not an integer"),
    ]
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in GOOD[:2]] + [b for b, _ in bad] + [
        f"{u},{i},{r},{t}" for u, i, r, t in GOOD[2:]]
    path = tmp_path / "partly bad.csv"
    path.write_text(H + "\n".join(lines) + "\n")
    outcome, rows, rejects = ingest_ok(warehouse, path)
    assert rows == sorted(GOOD)
    assert outcome.n_rows + outcome.n_rejected == len(lines)
    assert [line for line, _ in rejects] == list(range(4, 4 + len(bad)))  # header is line 1
    for (_, reason), (_, expected) in zip(rejects, bad):
        assert expected in reason


def test_duplicate_pairs_keep_the_latest_and_quarantine_the_rest(warehouse, tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text(H + "1,10,3.0,100\n1,10,4.0,300\n1,10,2.0,200\n2,10,1.0,100\n")
    _, rows, rejects = ingest_ok(warehouse, path)
    assert rows == [(1, 10, 4.0, 300), (2, 10, 1.0, 100)]
    assert rejects == [(2, "duplicate (user 1, item 10): superseded by line 3"),
                       (4, "duplicate (user 1, item 10): superseded by line 3")]


@pytest.mark.parametrize("variant", ["crlf", "bom", "utf16-le-bom", "utf16-be-bom", "gzip", "gzip-named-csv",
                                     "no-final-newline", "header-only"])
def test_encodings_line_endings_and_compression_give_the_same_rows(warehouse, tmp_path, variant):
    text, name = H + GOOD_TEXT, "ratings.csv"
    if variant == "crlf":
        data = text.replace("\n", "\r\n").encode()
    elif variant == "bom":
        data = b"\xef\xbb\xbf" + text.encode()
    elif variant == "utf16-le-bom":
        data = text.encode("utf-16")
    elif variant == "utf16-be-bom":
        data = b"\xfe\xff" + text.encode("utf-16-be")
    elif variant in ("gzip", "gzip-named-csv"):
        data, name = gzip.compress(text.encode()), "ratings.csv.gz" if variant == "gzip" else "ratings.csv"
    elif variant == "no-final-newline":
        data = text.rstrip("\n").encode()
    else:
        data = H.encode()
    path = tmp_path / name
    path.write_bytes(data)
    outcome, rows, rejects = ingest_ok(warehouse, path)
    assert rejects == []
    assert rows == ([] if variant == "header-only" else sorted(GOOD))
    assert warehouse.batch_record(outcome.batch_id) is not None  # an empty file is still one ledger batch


def test_a_truncated_last_line_is_rejected_and_the_rest_stored(warehouse, tmp_path):
    path = tmp_path / "cut.csv"
    path.write_text(H + GOOD_TEXT + "4,14,3")  # the writer died mid-line
    outcome, rows, rejects = ingest_ok(warehouse, path)
    assert rows == sorted(GOOD)
    assert rejects == [(len(GOOD) + 2, "expected 4 fields (user_id,item_id,rating,timestamp), found 3")]


def test_a_widened_scale_is_honoured_at_ingestion(warehouse, tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(H + "1,1,1000000,100\n2,2,1000001,100\n")
    _, rows, rejects = ingest_ok(warehouse, path, scale=(0.5, 1e6))
    assert rows == [(1, 1, 1e6, 100)] and "outside the scale [0.5, 1e+06]" in rejects[0][1]


def test_parquet_with_bad_values_is_ingested_with_rejects(warehouse, tmp_path):
    path = tmp_path / "batch.parquet"
    pq.write_table(pa.table({"user_id": [1, 2, -3, 4], "item_id": [10, 11, 12, 13],
                             "rating": [4.0, float("nan"), 3.0, 9.0], "timestamp": [1, 2, 3, 4]}), path)
    _, rows, rejects = ingest_ok(warehouse, path)
    assert rows == [(1, 10, 4.0, 1)]
    assert [line for line, _ in rejects] == [2, 3, 4]


@pytest.mark.parametrize("name", ["with space.csv", "it's.csv", 'say "hi".csv', "a..b.csv", "..csv",
                                  "x'); DROP TABLE ratings; --.csv", "semi;colon `tick` $(echo no).csv",
                                  "percent %s %d.csv", "ünïcødé ☃.csv", "-starts-with-dash.csv"])
def test_awkward_file_names_are_ingested_and_recorded_verbatim(warehouse, tmp_path, name):
    folder = tmp_path / "sub"
    folder.mkdir()
    path = folder / name
    path.write_text(H + GOOD_TEXT)
    via_dotdot = tmp_path / "sub" / ".." / "sub" / name  # a path with '..' components works too
    outcome, rows, _ = ingest_ok(warehouse, via_dotdot)
    assert rows == sorted(GOOD) and warehouse.ledger()["source"].to_pylist() == [str(via_dotdot)]
    assert warehouse.read("ratings").num_rows == len(GOOD)  # the store is intact, nothing dropped


def test_awkward_names_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from als_core.cli import app

    names = ["x'); DROP TABLE ratings; --.csv", "with space & quote'.csv"]
    paths = []
    for k, name in enumerate(names):
        paths.append(tmp_path / name)
        paths[-1].write_text(H + f"{k + 1},10,4.0,100\n")
    wh = tmp_path / "wh"
    result = CliRunner().invoke(app, ["ingest", *map(str, paths), "-w", str(wh)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    warehouse = Warehouse(str(wh))
    assert sorted(warehouse.ledger()["source"].to_pylist()) == sorted(map(str, paths))
    assert warehouse.read("ratings").num_rows == 2


def test_one_refused_file_does_not_stop_the_others_in_the_cli(tmp_path):
    from typer.testing import CliRunner

    from als_core.cli import app

    good, empty = tmp_path / "good.csv", tmp_path / "empty.csv"
    good.write_text(H + GOOD_TEXT)
    empty.write_bytes(b"")
    wh = tmp_path / "wh"
    result = CliRunner().invoke(app, ["ingest", str(empty), str(good), "-w", str(wh)], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "empty.csv" in result.output and "nothing committed" in result.output
    assert Warehouse(str(wh)).read("ratings").num_rows == len(GOOD)


# ------------------------------------------------------------------------ fuzzing the ingest path
VALID = st.tuples(st.integers(1, 25), st.integers(1, 25), st.sampled_from([0.5, 1.0, 2.5, 3.0, 4.5, 5.0]),
                  st.integers(0, 10**10))
CORRUPT = st.sampled_from([
    "", " ", "1,2", "1,2,3,4,5", "a,1,3,4", "1,b,3,4", "-1,2,3,4", "1,-2,3,4", "99999999999999999999,1,3,4",
    "1,2,nan,4", "1,2,inf,4", "1,2,7,4", "1,2,-1,4", "1,2,x,4", "1,2,3,-4", "1,2,3,y", "1;2;3;4", '"1","2"',
    "\u00a0", "1,,3,4", "1,2,3,4,", ",,,",
])


@st.composite
def rating_files(draw):
    """(file bytes, valid rows by data line index, number of data lines)."""
    items = draw(st.lists(st.one_of(VALID.map(lambda v: ("ok", v)), CORRUPT.map(lambda c: ("bad", c))),
                          max_size=60))
    lines = [f"{v[0]},{v[1]},{v[2]},{v[3]}" if kind == "ok" else v for kind, v in items]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    final = draw(st.booleans())
    text = H.replace("\n", newline) + newline.join(lines) + (newline if final and lines else "")
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    data = bom + text.encode()
    if draw(st.booleans()):
        data = gzip.compress(data)
    # Data lines as the file has them: a last empty string after a final newline is no line.
    n_lines = len(lines) if lines else 0
    if lines and not final and lines[-1] == "":
        n_lines -= 1  # an empty unterminated last "line" is no line at all
    valid = {k: v for k, (kind, v) in enumerate(items) if kind == "ok"}
    return data, valid, n_lines


@pytest.fixture(scope="module")
def shared_warehouse(tmp_path_factory):
    warehouse = Warehouse(str(tmp_path_factory.mktemp("fuzz") / "wh"))
    warehouse.ensure_tables()
    return warehouse


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=rating_files())
def test_fuzzed_files_through_ingest_never_crash_and_never_lose_a_valid_row(shared_warehouse, tmp_path, case):
    data, valid, n_lines = case
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    outcome = ingest_file(shared_warehouse, path, holdout_fraction=0.0)  # never raises: the header is good
    rows, rejects = stored(shared_warehouse, outcome.batch_id)
    # every data line is accounted for, in the store
    assert len(rows) + len(rejects) == n_lines
    record = shared_warehouse.batch_record(outcome.batch_id)
    assert (record["n_rows"], record["n_rejected"]) == (len(rows), len(rejects))
    # no valid row lost: one stored row per valid (user, item) pair, the documented winner
    # (latest timestamp, then latest line); the other valid rows of the pair are superseded
    pairs: dict[tuple, list] = {}
    for k, (u, i, r, t) in valid.items():
        pairs.setdefault((u, i), []).append((t, k, (u, i, float(r), t)))
    winners = {pair: max(group) for pair, group in pairs.items()}
    assert rows == sorted(w[2] for w in winners.values())
    # the rejected lines are exactly the invalid lines plus the superseded duplicates
    valid_lines = {k + 2 for k in valid}  # header is line 1
    invalid = set(range(2, n_lines + 2)) - valid_lines
    superseded = valid_lines - {w[1] + 2 for w in winners.values()}
    assert {line for line, _ in rejects} == invalid | superseded
    assert all("duplicate" in reason for line, reason in rejects if line in superseded)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), header=st.booleans())
def test_fuzzed_bytes_through_ingest_are_stored_in_full_or_refused_without_a_trace(shared_warehouse, tmp_path,
                                                                                     data, header):
    path = tmp_path / "bytes.csv"
    path.write_bytes((H.encode() if header else b"") + data)
    before = table_versions(shared_warehouse, INGEST_TABLES)
    try:
        outcome = ingest_file(shared_warehouse, path, holdout_fraction=0.0)
    except RatingFileError as exc:
        assert str(path) in str(exc)
        assert table_versions(shared_warehouse, INGEST_TABLES) == before
        return
    rows, rejects = stored(shared_warehouse, outcome.batch_id)
    record = shared_warehouse.batch_record(outcome.batch_id)
    assert (record["n_rows"], record["n_rejected"]) == (len(rows), len(rejects))
    assert len({line for line, _ in rejects}) == len(rejects)  # one reject per line


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=40)
       .filter(lambda n: n not in (".", "..") and len(n.encode()) < 200))
def test_fuzzed_file_names_are_recorded_verbatim(shared_warehouse, tmp_path, name):
    folder = tmp_path / "names"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(H + f"{zlib.crc32(name.encode()) % 1000 + 1},{len(name)},4.0,100\n")
    outcome = ingest_file(shared_warehouse, path, holdout_fraction=0.0)
    record = shared_warehouse.batch_record(outcome.batch_id)
    assert record["n_rows"] == 1
    assert outcome.already_ingested or record["source"] == str(path)


# ------------------------------------------------------------------------ replay (the CLI's stream)
@pytest.mark.parametrize("good_rows", [6, 0])
def test_replay_stores_or_quarantines_every_line_of_the_file(tmp_path, good_rows):
    """`streaming-als replay FILE` (applying directly) reads the file once and streams its good
    rows in micro-batches; the file's rejected rows (bad lines, superseded duplicates) are
    stored with the first batch, so stored + rejected == data lines, even with no good row."""
    from typer.testing import CliRunner

    from als_core.cli import app

    lines = [f"{u},{u + 10},3.5,{100 + u}" for u in range(1, good_rows + 1)]
    lines += ["1,11,4.0,50", "x,1,3,4", "2,2,nan,4", "3,3,3"] if good_rows else ["x,1,3,4", "2,2,nan,4"]
    path = tmp_path / "stream.csv"
    path.write_text(H + "\n".join(lines) + "\n")
    wh = tmp_path / "wh"
    result = CliRunner().invoke(app, ["replay", str(path), "--batch-size", "4", "-w", str(wh)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    warehouse = Warehouse(str(wh))
    ledger = warehouse.ledger().to_pylist()
    assert warehouse.read("ratings").num_rows == good_rows == sum(r["n_rows"] for r in ledger)
    rejected = warehouse.read("rejected_ratings")
    assert good_rows + rejected.num_rows == len(lines)
    assert set(rejected["batch_id"].to_pylist()) == {ledger[0]["batch_id"]}
    assert ledger[0]["n_rejected"] == rejected.num_rows and all(r["n_rejected"] == 0 for r in ledger[1:])
