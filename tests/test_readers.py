"""Tests of als_core.readers on real files written to tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from als_core import readers
from als_core.readers import RatingFileError, ReadResult, detect_format, read_ratings
from als_core.schema import RATING_SCHEMA, REJECT_SCHEMA

GENERIC_HEADER = "user_id,item_id,rating,timestamp"
ML_HEADER = "userId,movieId,rating,timestamp"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def rows(result: ReadResult) -> list[tuple]:
    return [tuple(row.values()) for row in result.ratings.to_pylist()]


def rejects(result: ReadResult) -> list[tuple]:
    return [(r["line"], r["raw"], r["reason"]) for r in result.rejected.to_pylist()]


def assert_accounted(result: ReadResult) -> None:
    assert result.ratings.schema.equals(RATING_SCHEMA, check_metadata=True)
    assert result.rejected.schema.equals(REJECT_SCHEMA, check_metadata=True)
    assert result.ratings.num_rows + result.rejected.num_rows == result.n_lines


# ----------------------------------------------------------------- each format accepted


def test_shipped_movielens_csv_reads_completely():
    path = Path(readers.__file__).parent / "data" / "ml-latest-small" / "ratings.csv"
    result = read_ratings(path)
    assert result.format == "movielens_csv"
    assert (result.ratings.num_rows, result.rejected.num_rows, result.n_lines) == (100_836, 0, 100_836)
    assert len(set(result.ratings.column("user_id").to_pylist())) == 610
    assert len(set(result.ratings.column("item_id").to_pylist())) == 9_724
    assert rows(result)[0] == (1, 1, 4.0, 964982703)
    assert_accounted(result)


def test_ml100k_u_data(tmp_path):
    text = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
    path = write(tmp_path, "u.data", text)
    result = read_ratings(path, scale=(1, 5))
    assert result.format == "ml100k"
    assert rows(result) == [
        (196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742), (22, 377, 1.0, 878887116)
    ]
    assert_accounted(result)


def test_movielens_ratings_dat(tmp_path):
    text = "1::1193::5::978300760\n1::661::3::978302109\n2::3068::4::978299000\n"
    path = write(tmp_path, "ratings.dat", text)
    result = read_ratings(path)
    assert result.format == "ml_dat"
    assert rows(result) == [
        (1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109), (2, 3068, 4.0, 978299000)
    ]


def test_movielens_ratings_csv_half_stars(tmp_path):
    path = write(tmp_path, "ratings.csv", f"{ML_HEADER}\n1,31,2.5,1260759144\n1,1029,0.5,1260759179\n")
    result = read_ratings(path)
    assert result.format == "movielens_csv"
    assert rows(result) == [(1, 31, 2.5, 1260759144), (1, 1029, 0.5, 1260759179)]


def test_generic_csv_any_column_order_rated_at_name_and_empty_timestamp(tmp_path):
    path = write(tmp_path, "batch.csv", 'rating,Rated_At,item_id,user_id\n4.5,100,7,3\n"3","",8,3\n')
    result = read_ratings(path)
    assert result.format == "csv"
    assert rows(result) == [(3, 7, 4.5, 100), (3, 8, 3.0, None)]


def test_generic_csv_without_timestamp_column_and_extra_column_ignored(tmp_path):
    path = write(tmp_path, "batch.csv", "user_id,item_id,rating,comment\n1,2,3.5,great\n")
    assert rows(read_ratings(path)) == [(1, 2, 3.5, None)]


def test_parquet_with_typed_columns(tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([1, 2, -3], pa.int32()),
            "item_id": [10.0, 20.0, 30.0],  # integral floats are fine ids
            "rating": [4.5, float("nan"), 3.0],
            "timestamp": pa.array([5_000, 6_000, None], pa.timestamp("ms")),
        }
    )
    path = tmp_path / "ratings.parquet"
    pq.write_table(table, path)
    result = read_ratings(path)
    assert result.format == "parquet"
    assert rows(result) == [(1, 10, 4.5, 5)]
    assert [(line, reason) for line, _, reason in rejects(result)] == [
        (2, "rating 'nan' is not finite"),
        (3, "negative user_id '-3'"),
    ]
    assert rejects(result)[1][1] == '{"user_id": -3, "item_id": 30, "rating": 3, "rated_at": null}'
    assert_accounted(result)


def test_detect_format_reads_content_not_just_the_name(tmp_path):
    assert detect_format(write(tmp_path, "x.data", "1\t2\t3\t4\n")) == "ml100k"
    assert detect_format(write(tmp_path, "x.dat", "1::2::3::4\n")) == "ml_dat"
    assert detect_format(write(tmp_path, "x.csv", f"{ML_HEADER}\n")) == "movielens_csv"
    assert detect_format(write(tmp_path, "y.csv", "user_id,item_id,rating\n")) == "csv"
    assert detect_format(write(tmp_path, "misnamed.csv", "1\t2\t3\t4\n")) == "ml100k"
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "rating": [3.0]}), tmp_path / "p.bin")
    assert detect_format(tmp_path / "p.bin") == "parquet"


# --------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    "line, reason",
    [
        ("1,2,3", "expected 4 fields (user_id,item_id,rating,timestamp), found 3"),
        ("1,2,3,4,5", "expected 4 fields (user_id,item_id,rating,timestamp), found 5"),
        ("", "empty line"),
        ("   ", "empty line"),
        (",2,3,4", "missing user_id"),
        ("1,,3,4", "missing item_id"),
        ("1,2,,4", "missing rating"),
        ("abc,2,3,4", "user_id 'abc' is not an integer"),
        ("1,2.5,3,4", "item_id '2.5' is not an integer"),
        ("-1,2,3,4", "negative user_id '-1'"),
        ("1,-2,3,4", "negative item_id '-2'"),
        ("9223372036854775808,2,3,4", "user_id '9223372036854775808' exceeds the int64 range"),
        ("1,2,good,4", "rating 'good' is not a number"),
        ("1,2,NaN,4", "rating 'NaN' is not finite"),
        ("1,2,inf,4", "rating 'inf' is not finite"),
        ("1,2,1e999,4", "rating '1e999' is not finite"),
        ("1,2,5.5,4", "rating '5.5' is outside the scale [0.5, 5]"),
        ("1,2,0,4", "rating '0' is outside the scale [0.5, 5]"),
        ("1,2,3,1.5", "timestamp '1.5' is not an integer"),
        ("1,2,3,-7", "negative timestamp '-7'"),
        ("1,2,3,yesterday", "timestamp 'yesterday' is not an integer"),
        ("x,y,z,w", "user_id 'x' is not an integer"),  # first failing field wins
    ],
)
def test_each_bad_row_is_rejected_with_its_line_and_reason(tmp_path, line, reason):
    path = write(tmp_path, "r.csv", f"{GENERIC_HEADER}\n1,1,4,10\n{line}\n2,2,3,20\n")
    result = read_ratings(path)
    assert rejects(result) == [(3, line, reason)]
    assert rows(result) == [(1, 1, 4.0, 10), (2, 2, 3.0, 20)]
    assert result.n_lines == 3


def test_boundary_values_are_accepted(tmp_path):
    path = write(tmp_path, "r.csv", f"{GENERIC_HEADER}\n9223372036854775807,007,0.5,0\n1,2,5.0,\n")
    assert rows(read_ratings(path)) == [(9223372036854775807, 7, 0.5, 0), (1, 2, 5.0, None)]


def test_movielens_formats_require_the_timestamp(tmp_path):
    csv_path = write(tmp_path, "ratings.csv", f"{ML_HEADER}\n1,2,3,\n")
    dat_path = write(tmp_path, "ratings.dat", "1::2::3::\n")
    assert rejects(read_ratings(csv_path)) == [(2, "1,2,3,", "missing timestamp")]
    assert rejects(read_ratings(dat_path)) == [(1, "1::2::3::", "missing timestamp")]


def test_scale_is_inclusive_and_configurable(tmp_path):
    path = write(tmp_path, "u.data", "1\t1\t1\t5\n1\t2\t5\t5\n1\t3\t0.5\t5\n1\t4\t5.01\t5\n")
    result = read_ratings(path, scale=(1, 5))
    assert [r[1] for r in rows(result)] == [1, 2]
    assert [(line, reason) for line, _, reason in rejects(result)] == [
        (3, "rating '0.5' is outside the scale [1, 5]"),
        (4, "rating '5.01' is outside the scale [1, 5]"),
    ]


def test_fields_padded_with_spaces_are_read(tmp_path):
    path = write(tmp_path, "ratings.dat", " 1 :: 2 :: 3.5 :: 4 \n")
    assert rows(read_ratings(path)) == [(1, 2, 3.5, 4)]


# ------------------------------------------------------------------------- duplicates


def test_duplicates_keep_the_latest_timestamp_not_the_latest_line(tmp_path):
    text = f"{GENERIC_HEADER}\n1,2,3.0,200\n1,2,4.0,100\n5,6,1.0,1\n1,2,5.0,150\n"
    result = read_ratings(write(tmp_path, "r.csv", text))
    assert rows(result) == [(1, 2, 3.0, 200), (5, 6, 1.0, 1)]
    assert rejects(result) == [
        (3, "1,2,4.0,100", "duplicate (user 1, item 2): superseded by line 2"),
        (5, "1,2,5.0,150", "duplicate (user 1, item 2): superseded by line 2"),
    ]


def test_duplicates_with_equal_or_missing_timestamps_keep_the_later_line(tmp_path):
    text = f"{GENERIC_HEADER}\n1,2,3.0,100\n1,2,4.0,100\n7,8,1.0,\n7,8,2.0,\n7,8,2.5,\n"
    result = read_ratings(write(tmp_path, "r.csv", text))
    assert rows(result) == [(1, 2, 4.0, 100), (7, 8, 2.5, None)]
    assert [(line, reason) for line, _, reason in rejects(result)] == [
        (2, "duplicate (user 1, item 2): superseded by line 3"),
        (4, "duplicate (user 7, item 8): superseded by line 6"),
        (5, "duplicate (user 7, item 8): superseded by line 6"),
    ]


def test_a_real_timestamp_beats_a_missing_one(tmp_path):
    result = read_ratings(write(tmp_path, "r.csv", f"{GENERIC_HEADER}\n1,2,3.0,5\n1,2,4.0,\n"))
    assert rows(result) == [(1, 2, 3.0, 5)]


def test_an_invalid_row_never_supersedes_a_valid_one(tmp_path):
    result = read_ratings(write(tmp_path, "r.csv", f"{GENERIC_HEADER}\n1,2,3.0,5\n1,2,9.0,6\n"))
    assert rows(result) == [(1, 2, 3.0, 5)]
    assert rejects(result)[0][2] == "rating '9.0' is outside the scale [0.5, 5]"


# ------------------------------------------------------------- encodings and line ends


def test_crlf_and_utf8_bom(tmp_path):
    content = b"\xef\xbb\xbf" + f"{ML_HEADER}\r\n1,2,3.5,10\r\n1,3,x,11\r\n".encode()
    result = read_ratings(write(tmp_path, "ratings.csv", content))
    assert result.format == "movielens_csv"
    assert rows(result) == [(1, 2, 3.5, 10)]
    assert rejects(result) == [(3, "1,3,x,11", "rating 'x' is not a number")]


def test_gzip_is_read_transparently(tmp_path):
    text = f"{ML_HEADER}\n1,2,3.5,10\n1,3,x,11\n"
    plain = read_ratings(write(tmp_path, "ratings.csv", text))
    zipped = read_ratings(write(tmp_path, "ratings.csv.gz", gzip.compress(text.encode())))
    assert zipped.format == "movielens_csv"
    assert zipped.ratings.equals(plain.ratings) and zipped.rejected.equals(plain.rejected)
    assert rows(zipped) == [(1, 2, 3.5, 10)]


def test_utf16_with_bom_is_decoded(tmp_path):
    path = write(tmp_path, "r.csv", "user_id,item_id,rating\r\n1,2,3\r\n".encode("utf-16"))
    assert rows(read_ratings(path)) == [(1, 2, 3.0, None)]


def test_truncated_last_line(tmp_path):
    complete = read_ratings(write(tmp_path, "a.dat", "1::2::3::4\n5::6::4::7"))
    assert rows(complete) == [(1, 2, 3.0, 4), (5, 6, 4.0, 7)]
    cut = read_ratings(write(tmp_path, "b.dat", "1::2::3::4\n5::6::4"))
    assert rejects(cut) == [(2, "5::6::4", "expected 4 fields (user,item,rating,timestamp), found 3")]


def test_blank_lines_are_rejected_and_counted(tmp_path):
    result = read_ratings(write(tmp_path, "u.data", "1\t2\t3\t4\n\n5\t6\t4\t7\n\n"))
    assert [(line, reason) for line, _, reason in rejects(result)] == [(2, "empty line"), (4, "empty line")]
    assert result.n_lines == 4


def test_header_only_gives_no_ratings_and_no_error(tmp_path):
    result = read_ratings(write(tmp_path, "r.csv", f"{ML_HEADER}\n"))
    assert (result.ratings.num_rows, result.rejected.num_rows, result.n_lines) == (0, 0, 0)
    assert result.ratings.schema.equals(RATING_SCHEMA)


def test_line_numbers_stay_exact_across_read_blocks(tmp_path, monkeypatch):
    lines = [f"{u},{u % 7},{(u % 10) / 2 + 0.5},{u}" if u % 13 else "bad" for u in range(1, 400)]
    lines[50] = "3,3,1.0,999999"  # supersedes line 4 (user 3, item 3)
    path = write(tmp_path, "r.csv", "\r\n".join([GENERIC_HEADER, *lines]))
    whole = read_ratings(path)
    # Tiny, odd block sizes force many blocks whose edges fall mid-line.
    monkeypatch.setattr(readers, "_HEAD_BYTES", 41)
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 37)
    blocked = read_ratings(path)
    assert blocked.ratings.equals(whole.ratings) and blocked.rejected.equals(whole.rejected)
    assert (3, 3, 1.0, 999999) in rows(blocked)
    assert (4, "3,3,2.0,3", "duplicate (user 3, item 3): superseded by line 52") in rejects(blocked)
    assert [line for line, raw, _ in rejects(blocked) if raw == "bad"] == [14 + 13 * k for k in range(30)]


# ------------------------------------------------------------------------ file errors


def _truncated_gzip() -> bytes:
    body = "".join(f"{i},{i * 7 % 1000},{i % 5 + 1},{i * 13}\n" for i in range(5000))
    whole = gzip.compress(f"{GENERIC_HEADER}\n{body}".encode())
    return whole[: len(whole) // 2]


def _make_parquet_without_columns(d: Path) -> Path:
    pq.write_table(pa.table({"a": [1], "b": [2]}), d / "cols.parquet")
    return d / "cols.parquet"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.csv", "no such file"),
        (lambda d: (d / "folder.csv").mkdir() or d / "folder.csv", "directory"),
        (lambda d: write(d, "empty.csv", b""), "empty"),
        (lambda d: write(d, "blank.csv", b"\n  \n"), "empty"),
        (lambda d: write(d, "nul.csv", b"user_id,item_id,rating\n1,2\x003\n"), "binary"),
        (lambda d: write(d, "latin1.csv", "user_id,item_id,rating\n1,2,\xe9\n".encode("latin-1")), "not UTF-8"),
        (lambda d: write(d, "utf16.csv", "user_id,item_id,rating\n".encode("utf-16-le")), "binary"),
        (lambda d: write(d, "abc.csv", "a,b,c\n1,2,3\n"), "expected a CSV header"),
        (lambda d: write(d, "noheader.csv", "1,2,3.5,4\n"), "lacks user_id"),
        (lambda d: write(d, "prose.txt", "hello world\n"), "cannot recognise line 1"),
        (lambda d: write(d, "blankfirst.dat", "\n1::2::3::4\n"), "line 1 is blank"),
        (lambda d: write(d, "bad.gz", b"\x1f\x8bnot really gzip"), "cannot read"),
        (lambda d: write(d, "cut.csv.gz", _truncated_gzip()), "cannot read"),
        (lambda d: write(d, "fake.parquet", "user_id,item_id,rating\n1,2,3\n"), "not a readable Parquet"),
        (_make_parquet_without_columns, "lack user_id"),
    ],
)
def test_file_level_problems_raise_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(RatingFileError) as error:
        read_ratings(path)
    assert path.name in str(error.value) and expected in str(error.value)
    assert isinstance(error.value, ValueError)


def test_explicit_format_must_fit_the_file(tmp_path):
    path = write(tmp_path, "r.csv", f"{GENERIC_HEADER}\n1,2,3,4\n")
    with pytest.raises(RatingFileError, match="r.csv.*not ml_dat"):
        read_ratings(path, format="ml_dat")
    assert rows(read_ratings(path, format="csv")) == [(1, 2, 3.0, 4)]
    with pytest.raises(ValueError, match="unknown format"):
        read_ratings(path, format="xlsx")


# --------------------------------------------------------------------------- fuzzing

_ids = st.integers(0, 30)
_half_stars = st.sampled_from([x / 2 for x in range(1, 11)])
_padding = st.sampled_from(["", " ", "  "])


@st.composite
def _valid_row(draw, timestamp_optional: bool):
    user, item, rating = draw(_ids), draw(_ids), draw(_half_stars)
    timestamps = st.integers(0, 10**12)
    ts = draw(st.one_of(st.none(), timestamps) if timestamp_optional else timestamps)
    rating_text = draw(st.sampled_from([str(rating), f"{rating:.2f}", f"{rating:g}"]))
    pad = draw(_padding)
    text = ",".join(f"{pad}{x}{pad}" for x in (user, item, rating_text, "" if ts is None else ts))
    return text, (user, item, rating, ts)


def _is_surely_invalid(line: str) -> bool:
    """A garbage line can't be valid unless it has 4 fields whose ids hold ASCII digits."""
    fields = line.split(",")
    return len(fields) != 4 or not all(any(c in "0123456789" for c in f) for f in fields[:2])


_garbage_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), max_size=30
).filter(_is_surely_invalid)
_BAD_RATINGS = ["abc", "nan", "-inf", "9", "0", "-1", "", "1e999", "4..5"]
_BAD_TIMESTAMPS = ["-5", "1.5", "x", "1e3", "99999999999999999999"]
_BAD_IDS = ["-1", "", "1.0", "99999999999999999999", "x1"]
_bad_field_rows = st.one_of(
    st.tuples(_ids, _ids, st.sampled_from(_BAD_RATINGS), st.just("5")),
    st.tuples(_ids, _ids, st.just("3"), st.sampled_from(_BAD_TIMESTAMPS)),
    st.tuples(st.sampled_from(_BAD_IDS), _ids, st.just("3"), st.just("5")),
    st.tuples(_ids, _ids, st.just("3")),
    st.tuples(_ids, _ids, st.just("3"), st.just("5"), st.just("6")),
).map(lambda fields: ",".join(map(str, fields)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.sampled_from([GENERIC_HEADER, ML_HEADER]),
    data=st.data(),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    bom=st.booleans(),
)
def test_fuzzed_csv_accounts_for_every_line(tmp_path, header, data, crlf, final_newline, bom):
    generic = header == GENERIC_HEADER
    entries = data.draw(
        st.lists(
            st.one_of(
                _valid_row(timestamp_optional=generic),
                _garbage_text.map(lambda line: (line, None)),
                _bad_field_rows.map(lambda line: (line, None)),
            ),
            max_size=40,
        )
    )
    if entries and entries[-1][0] == "" and not final_newline:
        entries, final_newline = entries[:-1], True  # same bytes: 'a\n' + '' is 'a\n'
    newline = "\r\n" if crlf else "\n"
    text = newline.join([header, *(line for line, _ in entries)]) + (newline if final_newline else "")
    path = write(tmp_path, "fuzz.csv", (b"\xef\xbb\xbf" if bom else b"") + text.encode())

    if "\x00" in text:  # NUL bytes make it a binary file: a file-level error, not a bad row
        with pytest.raises(RatingFileError, match="fuzz.csv.*binary"):
            read_ratings(path)
        return
    result = read_ratings(path)

    assert_accounted(result)
    assert result.n_lines == len(entries)
    # Expected: per (user, item) the valid row with the latest (timestamp, line) survives.
    winners: dict[tuple[int, int], tuple[int, tuple]] = {}
    for line_no, (_, parsed) in enumerate(entries, start=2):
        if parsed is not None:
            key, rank = parsed[:2], (-1 if parsed[3] is None else parsed[3], line_no)
            if key not in winners or rank > winners[key][0]:
                winners[key] = (rank, parsed)
    expected_rows = sorted(winners.values(), key=lambda w: w[0][1])
    assert rows(result) == [parsed for _, parsed in expected_rows]
    kept_lines = {rank[1] for rank, _ in winners.values()}
    assert {line for line, _, _ in rejects(result)} == set(range(2, len(entries) + 2)) - kept_lines
    for line, raw, reason in rejects(result):
        assert raw == entries[line - 2][0] and reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"", f"{GENERIC_HEADER}\n".encode(), b"1::2::3::4\n", b"1\t2\t3\t4\n"]),
    tail=st.binary(max_size=120),
)
def test_fuzzed_bytes_never_crash(tmp_path, prefix, tail):
    path = write(tmp_path, "noise.csv", prefix + tail)
    try:
        result = read_ratings(path)
    except RatingFileError as error:
        assert "noise.csv" in str(error)
    else:
        assert_accounted(result)
