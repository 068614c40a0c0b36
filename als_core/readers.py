"""Read rating files into RATING_SCHEMA tables, accounting for every row.

``read_ratings(path)`` returns a :class:`ReadResult`: the good ratings, the refused rows
(each with its 1-based physical line number, raw text and one reason), and how many data
rows were examined. ``len(ratings) + len(rejected) == n_lines`` always holds.

Formats (``format=`` or detected by ``"auto"``)
----------------------------------------------
``ml100k``         MovieLens 100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header.
``movielens_csv``  MovieLens ``ratings.csv``: header ``userId,movieId,rating,timestamp``.
``ml_dat``         MovieLens 1M/10M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``,
                   no header.
``csv``            Generic CSV whose header names ``user_id``, ``item_id``, ``rating`` and
                   optionally ``timestamp`` or ``rated_at`` (any order, any case;
                   ``userId``/``movieId``/``itemId`` are accepted too; other columns are ignored).
                   An empty timestamp gives a null ``rated_at``. Fields may be wrapped in double
                   quotes (but hold no commas).
``parquet``        Parquet with the same columns. Ids, ratings and timestamps may be any numeric
                   (or string) type; a timestamp-typed column becomes epoch seconds; nulls in the
                   timestamp column give null ``rated_at``. ``line`` is the 1-based row number and
                   ``raw`` a JSON-like rendering of the row.

Detection: gzip (magic bytes, any name) is decompressed transparently; Parquet is recognised
by its ``PAR1`` magic or a ``.parquet``/``.pq`` name; a text file by its first line:
``::`` means ``ml_dat``, a tab ``ml100k``, a comma a CSV header (``movielens_csv`` when it is
exactly the MovieLens header, else ``csv``). The content decides, not the extension, so a
misnamed file is still read correctly. An explicit ``format=`` is checked against line 1 too.

Row outcomes (each bad row is rejected with the first reason that applies, in this order)
-----------------------------------------------------------------------------------------
- ``empty line`` (a blank or whitespace-only line, including blank lines at the end);
- ``expected 4 fields (...), found N`` (too few / too many fields; a truncated last line);
- ``missing user_id`` / ``negative user_id '-3'`` / ``user_id 'x' is not an integer`` /
  ``user_id '...' exceeds the int64 range`` (same for ``item_id``);
- ``missing rating`` / ``rating 'x' is not a number`` / ``rating 'nan' is not finite`` /
  ``rating '6' is outside the scale [0.5, 5]`` (the scale is inclusive);
- ``missing timestamp`` (MovieLens formats only) / ``timestamp '1.5' is not an integer`` /
  ``negative timestamp '-1'`` / ``timestamp '...' exceeds the int64 range``;
- ``duplicate (user 1, item 2): superseded by line 57``: of the valid rows for one (user, item)
  pair the one with the latest timestamp is kept (ties and null timestamps: the later line
  wins; a null timestamp counts as older than any real one). The others are rejected.

How: the text is cut into physical lines and fields with Arrow compute kernels (never a
Python loop per row), in blocks of whole lines so memory stays bounded; doing the splitting
here rather than in pyarrow.csv is what keeps every line number exact and every raw line
available for ``rejected``. About 100k rows are read in 0.15 s.

Leading/trailing whitespace around fields is ignored. Line endings may be LF or CRLF; a
UTF-8 byte-order mark is skipped; a last line without a newline is read like any other.
Ratings come back in file order; rejects are sorted by line.

File outcomes
-------------
``RatingFileError`` (a ``ValueError`` whose message names the file and what was expected) for:
a missing path, a directory, an empty file (0 bytes, or only whitespace), a blank line 1,
binary content (NUL bytes or bytes that are not UTF-8), a corrupt or truncated gzip stream,
a first line from which no format can be recognised (or that does not fit the requested
format), a CSV header without the required columns, a Parquet file that cannot be opened or
lacks the columns (a gzip-compressed Parquet file is refused as binary).

Not errors: a header with no data rows (returns 0 ratings, ``n_lines == 0``) and an empty
Parquet file with the right columns; a file in which every row is bad (all land in
``rejected``). UTF-16 text with a byte-order mark is decoded (UTF-16 without a BOM contains
NUL bytes and is refused as binary).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.csv"
>>> _ = path.write_text("user_id,item_id,rating\\n1,10,4.5\\n1,11,nine\\n")
>>> result = read_ratings(path)
>>> result.format, result.ratings.num_rows, result.n_lines
('csv', 1, 2)
>>> result.rejected.to_pylist()
[{'line': 3, 'raw': '1,11,nine', 'reason': "rating 'nine' is not a number"}]
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from als_core.schema import DEFAULT_SCALE, RATING_SCHEMA, REJECT_SCHEMA

FORMATS = ("ml100k", "movielens_csv", "ml_dat", "csv", "parquet")

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_HEAD_BYTES = 64 * 1024  # enough to hold line 1 of any rating file
_BLOCK_BYTES = 16 * 1024 * 1024  # text is parsed in blocks of whole lines to bound memory
_PARQUET_BATCH_ROWS = 1 << 20

_MOVIELENS_CSV_HEADER = "userId,movieId,rating,timestamp"
_ML_FIELDS = ("user_id", "item_id", "rating", "rated_at")
# Accepted header names (compared lower-cased) for each output column.
_COLUMN_ALIASES = {
    "user_id": ("user_id", "userid"),
    "item_id": ("item_id", "itemid", "movieid", "movie_id"),
    "rating": ("rating",),
    "rated_at": ("timestamp", "rated_at"),
}
_EXPECTED_COLUMNS = "user_id,item_id,rating[,timestamp|rated_at]"

_INT64_MAX_TEXT = str(np.iinfo(np.int64).max)
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NON_FINITE_WORD = r"(?i)^[+-]?(nan|inf|infinity)$"

_CANDIDATE_SCHEMA = pa.schema(
    [pa.field("line", pa.int64()), pa.field("raw", pa.string()), *RATING_SCHEMA]
)


class RatingFileError(ValueError):
    """The file is not a rating file this module can read (the message says why)."""


@dataclass(frozen=True, repr=False)
class ReadResult:
    """What ``read_ratings`` found in one file."""

    path: str
    format: str
    ratings: pa.Table  # RATING_SCHEMA
    rejected: pa.Table  # REJECT_SCHEMA
    n_lines: int  # data rows examined, header excluded

    def __repr__(self) -> str:
        return (
            f"ReadResult(path={self.path!r}, format={self.format!r}, "
            f"ratings={self.ratings.num_rows} rows, rejected={self.rejected.num_rows} rows, "
            f"n_lines={self.n_lines})"
        )


@dataclass(frozen=True)
class _Layout:
    """How the fields of a text format sit on a line."""

    format: str
    separator: str
    n_fields: int
    positions: dict[str, int]  # output column -> field index; rated_at may be absent
    has_header: bool
    timestamp_required: bool
    names: str  # field names for messages, e.g. "user_id,item_id,rating,timestamp"


# ---------------------------------------------------------------------------- public API


def detect_format(path: str | Path) -> str:
    """Name the format of ``path`` (one of ``FORMATS``) or raise ``RatingFileError``.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "u.data"
    >>> _ = path.write_text("196\\t242\\t3\\t881250949\\n")
    >>> detect_format(path)
    'ml100k'
    """
    path = _existing_file(path)
    if _is_parquet(path):
        return "parquet"
    with _text_stream(path) as (head, _):
        return _layout_for(path, "auto", _first_line(path, head)).format


def read_ratings(
    path: str | Path, *, format: str = "auto", scale: tuple[float, float] = DEFAULT_SCALE
) -> ReadResult:
    """Read one rating file; see the module docstring for every outcome.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.dat"
    >>> _ = path.write_text("1::1193::5::978300760\\n1::661::3::978302109\\n"
    ...                     "1::661::4::978302110\\n")
    >>> result = read_ratings(path, scale=(1, 5))
    >>> result.ratings.to_pylist()[-1]
    {'user_id': 1, 'item_id': 661, 'rating': 4.0, 'rated_at': 978302110}
    >>> result.rejected.column("reason").to_pylist()
    ['duplicate (user 1, item 661): superseded by line 3']
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    low, high = float(scale[0]), float(scale[1])
    if not low <= high:
        raise ValueError(f"scale {scale!r} must be (low, high) with low <= high")
    path = _existing_file(path)

    if format == "parquet" or (format == "auto" and _is_parquet(path)):
        fmt, candidates, rejects, n_lines = "parquet", *_read_parquet(path, (low, high))
    else:
        fmt, candidates, rejects, n_lines = _read_text(path, format, (low, high))

    candidates = pa.concat_tables(candidates) if candidates else _CANDIDATE_SCHEMA.empty_table()
    kept, superseded = _drop_superseded(candidates)
    rejected = pa.concat_tables([*rejects, superseded]) if rejects else superseded
    rejected = rejected.sort_by("line").cast(REJECT_SCHEMA)
    ratings = kept.select(RATING_SCHEMA.names).cast(RATING_SCHEMA)
    return ReadResult(str(path), fmt, ratings, rejected, n_lines)


# ------------------------------------------------------------------------- file level


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise RatingFileError(f"{path}: no such file; expected a rating file")
    if not path.is_file():
        raise RatingFileError(f"{path}: is a directory or special file; expected a rating file")
    return path


def _fail(path: Path, problem: str) -> RatingFileError:
    return RatingFileError(f"{path}: {problem}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _is_parquet(path: Path) -> bool:
    """Parquet by name or by magic; a gzip-wrapped file is text (or refused) instead."""
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(4) == _PARQUET_MAGIC


@contextmanager
def _text_stream(path: Path) -> Iterator[tuple[bytes, BinaryIO]]:
    """(first bytes, stream of the rest) of the file's text as UTF-8, without any BOM.

    Undoes gzip; decodes UTF-16 up front (such files are rare and small).
    """
    try:
        if _is_gzip(path):
            stream = pa.input_stream(str(path), compression="gzip")
        else:
            stream = open(path, "rb")
    except (OSError, pa.ArrowException) as error:
        raise _fail(path, f"cannot open ({error}); expected a plain or gzip text rating file")
    with stream:
        head = _read_rest(path, stream, _HEAD_BYTES)
        if head.startswith(_UTF8_BOM):
            head = head[len(_UTF8_BOM) :]
        elif head[:2] in _UTF16_BOMS:
            try:
                text = (head + _read_rest(path, stream)).decode("utf-16")
            except UnicodeDecodeError as error:
                raise _fail(path, f"starts with a UTF-16 mark but is not UTF-16 ({error})")
            stream = io.BytesIO(text.encode("utf-8"))
            head = stream.read(_HEAD_BYTES)
        yield head, stream


def _read_rest(path: Path, stream: BinaryIO, size: int = -1) -> bytes:
    try:
        return stream.read(size)
    except (OSError, pa.ArrowException) as error:
        raise _fail(path, f"cannot read ({error}); expected a plain or intact gzip text file")


def _first_line(path: Path, head: bytes) -> str:
    if not head.strip() and len(head) < _HEAD_BYTES:
        raise _fail(path, "is empty; expected a rating file with at least a header or one rating")
    end = head.find(b"\n")
    if end < 0 and len(head) == _HEAD_BYTES:
        raise _fail(path, f"line 1 is longer than {_HEAD_BYTES} bytes; not a rating file")
    first = head if end < 0 else head[:end]
    try:
        if b"\x00" in first:
            raise UnicodeError("NUL byte")
        line = first.decode("utf-8").rstrip("\r")
    except UnicodeError:
        raise _binary_error(path, first, 1) from None
    if not line.strip():
        raise _fail(path, "line 1 is blank; expected a header or a rating line")
    return line


def _int64_array(values: np.ndarray) -> pa.Array:
    """An Arrow int64 array sharing the memory of a numpy array (no conversion, no copy)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _binary_error(path: Path, data: bytes, first_line: int) -> RatingFileError:
    """The error for text that has NUL bytes or is not UTF-8, naming the first bad line."""

    def line_at(offset: int) -> int:
        return first_line + data.count(b"\n", 0, offset)

    nul = data.find(b"\x00")
    if nul >= 0:
        where = f"NUL byte on line {line_at(nul)}"
    else:
        try:
            data.decode("utf-8")
            where = "not UTF-8"
        except UnicodeDecodeError as error:
            where = f"not UTF-8 on line {line_at(error.start)}"
    return _fail(path, f"binary content ({where}); expected a text rating file")


# --------------------------------------------------------------------------- layouts


def _layout_for(path: Path, fmt: str, first_line: str) -> _Layout:
    """The layout of ``fmt`` ('auto' = recognise it from line 1), checked against line 1."""
    if fmt == "auto":
        if "::" in first_line:
            fmt = "ml_dat"
        elif "\t" in first_line:
            fmt = "ml100k"
        elif "," in first_line:
            fmt = "movielens_csv" if first_line.strip() == _MOVIELENS_CSV_HEADER else "csv"
        else:
            raise _fail(
                path,
                f"cannot recognise line 1 {first_line[:80]!r}; expected a CSV header "
                f"({_EXPECTED_COLUMNS}), tab-separated u.data or '::'-separated ratings.dat lines",
            )
    if fmt in ("ml100k", "ml_dat"):
        separator = "\t" if fmt == "ml100k" else "::"
        if separator not in first_line:
            shape = "user<TAB>item<TAB>rating<TAB>timestamp" if fmt == "ml100k" else (
                "UserID::MovieID::Rating::Timestamp"
            )
            raise _fail(path, f"line 1 {first_line[:80]!r} is not {fmt}; expected {shape} lines")
        positions = {name: i for i, name in enumerate(_ML_FIELDS)}
        return _Layout(fmt, separator, 4, positions, False, True, "user,item,rating,timestamp")
    return _csv_layout(path, fmt, first_line)


def _csv_layout(path: Path, fmt: str, header: str) -> _Layout:
    names = [name.strip().strip('"').strip() for name in header.split(",")]
    positions: dict[str, int] = {}
    for column, aliases in _COLUMN_ALIASES.items():
        found = [i for i, name in enumerate(names) if name.lower() in aliases]
        if len(found) > 1:
            raise _fail(path, f"header {header!r} names {column} more than once")
        if found:
            positions[column] = found[0]
    missing = [column for column in ("user_id", "item_id", "rating") if column not in positions]
    if missing:
        raise _fail(
            path,
            f"header {header[:80]!r} lacks {', '.join(missing)}; "
            f"expected a CSV header with columns {_EXPECTED_COLUMNS}",
        )
    return _Layout(
        format=fmt,
        separator=",",
        n_fields=len(names),
        positions=positions,
        has_header=True,
        timestamp_required=(fmt == "movielens_csv"),
        names=",".join(names),
    )


# ----------------------------------------------------------------------------- text


def _read_text(
    path: Path, fmt: str, scale: tuple[float, float]
) -> tuple[str, list[pa.Table], list[pa.Table], int]:
    candidates: list[pa.Table] = []
    rejects: list[pa.Table] = []
    n_physical = 0
    with _text_stream(path) as (head, stream):
        layout = _layout_for(path, fmt, _first_line(path, head))
        for first_line_no, block in _line_blocks(path, head, stream):
            numbers, lines = _split_lines(path, block, first_line_no)
            n_physical += len(lines)
            if layout.has_header and first_line_no == 1:
                numbers, lines = numbers[1:], lines[1:]
            good, bad = _parse_lines(numbers, lines, layout, scale)
            candidates.append(good)
            rejects.append(bad)
    n_lines = n_physical - (1 if layout.has_header else 0)
    return layout.format, candidates, rejects, n_lines


def _line_blocks(path: Path, head: bytes, stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield (number of its first line, bytes) for blocks of whole lines, in order."""
    pending, line_no = head, 1
    while True:
        chunk = _read_rest(path, stream, _BLOCK_BYTES)
        pending += chunk
        if not chunk:  # end of file: whatever is left is the (possibly unterminated) last line
            if pending:
                yield line_no, pending
            return
        cut = pending.rfind(b"\n") + 1
        if cut == 0:
            continue  # one very long line; keep reading until it ends
        block, pending = pending[:cut], pending[cut:]
        yield line_no, block
        line_no += block.count(b"\n")


def _split_lines(path: Path, block: bytes, first_line_no: int) -> tuple[pa.Array, pa.Array]:
    """Physical line numbers and texts (without line ending) of a block of whole lines."""
    # One string holding the whole block, built from the bytes without copying them.
    offsets = np.array([0, len(block)], dtype=np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(block)]
    whole = pa.Array.from_buffers(pa.string(), 1, buffers)
    try:
        if b"\x00" in block:
            raise pa.ArrowInvalid("NUL byte")
        whole.validate(full=True)  # checks UTF-8 without building a Python str
    except pa.ArrowInvalid:
        raise _binary_error(path, block, first_line_no) from None
    lines = pc.list_flatten(pc.split_pattern(whole, "\n"))
    if block.endswith(b"\n"):  # the empty string after the last newline is not a line
        lines = lines.slice(0, len(lines) - 1)
    if b"\r" in block:
        lines = pc.replace_substring_regex(lines, r"\r$", "")
    return _int64_array(np.arange(first_line_no, first_line_no + len(lines))), lines


def _parse_lines(
    numbers: pa.Array, lines: pa.Array, layout: _Layout, scale: tuple[float, float]
) -> tuple[pa.Table, pa.Table]:
    """Split lines into fields, reject malformed ones, validate the rest."""
    blank = pc.equal(pc.utf8_trim_whitespace(lines), "")
    parts = pc.split_pattern(lines, layout.separator)
    n_parts = pc.list_value_length(parts)
    wrong_count = pc.and_(pc.invert(blank), pc.not_equal(n_parts, layout.n_fields))
    misshapen = pc.or_(blank, wrong_count)
    shape_reason = pc.if_else(
        blank.filter(misshapen),
        "empty line",
        pc.binary_join_element_wise(
            f"expected {layout.n_fields} fields ({layout.names}), found ",
            pc.cast(n_parts.filter(misshapen), pa.string()),
            "",
        ),
    )
    shape_rejects = _reject_table(
        numbers.filter(misshapen), lines.filter(misshapen), shape_reason
    )

    well_shaped = pc.invert(misshapen)
    parts = parts.filter(well_shaped)
    quoted = layout.separator == "," and pc.any(pc.match_substring(lines, '"')).as_py()
    fields = {}
    for column, position in layout.positions.items():
        values = pc.utf8_trim_whitespace(pc.list_element(parts, position))
        if quoted:  # CSV writers may quote any field
            values = pc.replace_substring_regex(values, r'^"(.*)"$', r"\1")
        fields[column] = values
    good, bad = _validate(
        numbers.filter(well_shaped),
        lines.filter(well_shaped),
        fields,
        layout.timestamp_required,
        scale,
    )
    return good, pa.concat_tables([shape_rejects, bad])


# --------------------------------------------------------------------------- parquet


def _read_parquet(
    path: Path, scale: tuple[float, float]
) -> tuple[list[pa.Table], list[pa.Table], int]:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise _fail(path, f"is not a readable Parquet file ({error}); expected Parquet with "
                    f"columns {_EXPECTED_COLUMNS}")
    names = parquet.schema_arrow.names
    columns: dict[str, str] = {}
    for column, aliases in _COLUMN_ALIASES.items():
        found = [name for name in names if name.lower() in aliases]
        if len(found) > 1:
            raise _fail(path, f"Parquet columns {names} name {column} more than once")
        if found:
            columns[column] = found[0]
    missing = [column for column in ("user_id", "item_id", "rating") if column not in columns]
    if missing:
        raise _fail(path, f"Parquet columns {names} lack {', '.join(missing)}; "
                    f"expected columns {_EXPECTED_COLUMNS}")

    candidates, rejects, n_rows = [], [], 0
    try:
        batches = list(parquet.iter_batches(_PARQUET_BATCH_ROWS, columns=list(columns.values())))
    except (OSError, pa.ArrowException) as error:
        raise _fail(path, f"cannot read Parquet data ({error})")
    for batch in batches:
        try:
            fields = {column: _as_text(batch.column(name)) for column, name in columns.items()}
        except pa.ArrowException as error:
            raise _fail(path, f"has a column of a type that is not numeric or text ({error})")
        numbers = _int64_array(np.arange(n_rows + 1, n_rows + batch.num_rows + 1))
        raw = _render_rows(fields, {c: batch.column(n).type for c, n in columns.items()})
        good, bad = _validate(numbers, raw, fields, False, scale)
        candidates.append(good)
        rejects.append(bad)
        n_rows += batch.num_rows
    return candidates, rejects, n_rows


_TIME_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _as_text(values: pa.Array) -> pa.Array:
    """Typed Parquet values as the text the shared validation understands."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.dictionary_decode(), kind.value_type
    if pa.types.is_timestamp(kind):
        seconds = pc.divide(values.cast(pa.int64()), _TIME_UNITS_PER_SECOND[kind.unit])
        return pc.cast(seconds, pa.string())
    if pa.types.is_floating(kind):
        # Integral floats (e.g. ids stored as 12.0) print as integers, not as '1.2e+01'.
        values = values.cast(pa.float64())
        integral = pc.and_(
            pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values)),
            pc.less(pc.abs(values), 2.0**63),
        )
        as_int = pc.cast(pc.if_else(integral, values, 0.0), pa.int64())
        return pc.if_else(integral, pc.cast(as_int, pa.string()), pc.cast(values, pa.string()))
    return pc.cast(values, pa.string())


def _render_rows(fields: dict[str, pa.Array], types: dict[str, pa.DataType]) -> pa.Array:
    """A JSON-like text of each Parquet row, standing in for the raw line."""
    pieces: list[pa.Array | str] = ["{"]
    for i, (column, values) in enumerate(fields.items()):
        if pa.types.is_string(types[column]) or pa.types.is_large_string(types[column]):
            values = pc.binary_join_element_wise('"', values, '"', "")
        pieces += [("" if i == 0 else ", ") + f'"{column}": ', pc.fill_null(values, "null")]
    return pc.binary_join_element_wise(*pieces, "}", "")


# ------------------------------------------------------------------------ validation

# A check is (failed mask over all rows, field whose text the message quotes or None,
# message prefix, message suffix). Masks are cheap; the message strings are only built for
# the rows that fail, which keeps the common all-good case fast.
_Check = tuple[pa.Array, "str | None", str, str]


def _validate(
    numbers: pa.Array,
    raw: pa.Array,
    fields: dict[str, pa.Array],
    timestamp_required: bool,
    scale: tuple[float, float],
) -> tuple[pa.Table, pa.Table]:
    """Check text fields; return (candidate rows with line and raw, rejected rows).

    A row failing several checks gets the message of the first, in the order below.
    """
    user_checks, user_ids = _count_checks(fields["user_id"], "user_id", "user_id", True)
    item_checks, item_ids = _count_checks(fields["item_id"], "item_id", "item_id", True)
    rating_checks, ratings = _rating_checks(fields["rating"], scale)
    if "rated_at" in fields:
        time_checks, rated_at = _count_checks(
            fields["rated_at"], "rated_at", "timestamp", timestamp_required
        )
    else:
        time_checks, rated_at = [], pa.nulls(len(numbers), pa.int64())
    checks = [*user_checks, *item_checks, *rating_checks, *time_checks]

    failed_any = checks[0][0]
    for failed, *_ in checks[1:]:
        failed_any = pc.or_(failed_any, failed)
    good = pc.invert(failed_any)
    candidates = pa.table(
        [numbers, raw, user_ids, item_ids, ratings, rated_at], schema=_CANDIDATE_SCHEMA
    ).filter(good)

    bad_fields = {name: values.filter(failed_any) for name, values in fields.items()}
    messages = []
    for _, field, prefix, suffix in checks:
        if field is None:
            messages.append(prefix + suffix)
        else:
            messages.append(pc.binary_join_element_wise(
                f"{prefix}'", bad_fields[field], f"'{suffix}", ""
            ))
    masks = [failed.filter(failed_any) for failed, *_ in checks]
    reason = pc.case_when(
        pc.make_struct(*masks, field_names=[f"c{i}" for i in range(len(masks))]), *messages
    )
    rejects = _reject_table(numbers.filter(failed_any), raw.filter(failed_any), reason)
    return candidates, rejects


def _flag(condition: pa.Array) -> pa.Array:
    """A mask with null (from a null input) read as False."""
    return pc.fill_null(condition, False)


def _count_checks(
    text: pa.Array, field: str, name: str, required: bool
) -> tuple[list[_Check], pa.Array]:
    """Checks and int64 values (null where unusable) of a non-negative integer column."""
    missing = pc.fill_null(pc.equal(text, ""), True)
    present = pc.invert(missing)
    digits = _flag(pc.ascii_is_decimal(text))
    after_minus = pc.utf8_slice_codeunits(text, 1)
    negative = _flag(pc.and_(pc.starts_with(text, "-"), pc.ascii_is_decimal(after_minus)))
    not_integer = pc.and_(present, pc.invert(digits))
    significant = pc.utf8_ltrim(text, "0")  # '007' is 7
    length = pc.utf8_length(significant)
    too_big = _flag(pc.and_(digits, pc.or_(
        pc.greater(length, 19),
        pc.and_(pc.equal(length, 19), pc.greater(significant, _INT64_MAX_TEXT)),
    )))
    checks: list[_Check] = []
    if required:
        checks.append((missing, None, f"missing {name}", ""))
    checks += [
        (negative, field, f"negative {name} ", ""),
        (not_integer, field, f"{name} ", " is not an integer"),
        (too_big, field, f"{name} ", " exceeds the int64 range"),
    ]
    usable = pc.and_(digits, pc.invert(too_big))
    values = pc.cast(pc.if_else(usable, text, "0"), pa.int64())
    return checks, pc.if_else(usable, values, pa.scalar(None, pa.int64()))


def _rating_checks(text: pa.Array, scale: tuple[float, float]) -> tuple[list[_Check], pa.Array]:
    """Checks and float64 values of the rating column; the scale is inclusive."""
    low, high = scale
    missing = pc.fill_null(pc.equal(text, ""), True)
    numeric = _flag(pc.match_substring_regex(text, _NUMBER))
    values = pc.cast(pc.if_else(numeric, text, "0"), pa.float64())
    # 'nan'/'inf' do not match the number pattern; '1e999' does but parses to inf.
    non_finite = pc.or_(
        _flag(pc.match_substring_regex(text, _NON_FINITE_WORD)),
        pc.and_(numeric, pc.invert(pc.is_finite(values))),
    )
    out_of_scale = pc.and_(numeric, pc.or_(pc.less(values, low), pc.greater(values, high)))
    checks: list[_Check] = [
        (missing, None, "missing rating", ""),
        (non_finite, "rating", "rating ", " is not finite"),
        (pc.invert(numeric), "rating", "rating ", " is not a number"),
        (out_of_scale, "rating", "rating ", f" is outside the scale [{low:g}, {high:g}]"),
    ]
    return checks, values


def _reject_table(numbers: pa.Array, raw: pa.Array, reason: pa.Array) -> pa.Table:
    return pa.table(
        [numbers, pc.cast(raw, pa.string()), pc.cast(reason, pa.string())], schema=REJECT_SCHEMA
    )


# ------------------------------------------------------------------------ duplicates


def _drop_superseded(candidates: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Keep the latest rating per (user, item); return (kept rows, rejects for the rest)."""
    n = candidates.num_rows
    if n == 0:
        return candidates, REJECT_SCHEMA.empty_table()
    users = candidates.column("user_id").to_numpy()
    items = candidates.column("item_id").to_numpy()
    lines = candidates.column("line").to_numpy()
    # A null timestamp sorts before every real one (real ones are >= 0).
    times = candidates.column("rated_at").fill_null(-1).to_numpy()
    order = np.lexsort((lines, times, items, users))  # last key sorts first
    sorted_users, sorted_items = users[order], items[order]
    last_of_pair = np.ones(n, dtype=bool)
    last_of_pair[:-1] = (sorted_users[1:] != sorted_users[:-1]) | (
        sorted_items[1:] != sorted_items[:-1]
    )
    if last_of_pair.all():
        return candidates, REJECT_SCHEMA.empty_table()

    pair_index = np.cumsum(np.r_[True, last_of_pair[:-1]]) - 1
    winner_line = lines[order][np.flatnonzero(last_of_pair)][pair_index]
    losers = order[~last_of_pair]
    keep = np.ones(n, dtype=bool)
    keep[losers] = False

    def text(values: np.ndarray) -> pa.Array:
        return pc.cast(_int64_array(values), pa.string())

    reason = pc.binary_join_element_wise(
        "duplicate (user ", text(users[losers]),
        ", item ", text(items[losers]),
        "): superseded by line ", text(winner_line[~last_of_pair]),
        "",
    )
    loser_raw = candidates.column("raw").take(_int64_array(losers))
    rejects = _reject_table(_int64_array(lines[losers]), loser_raw, reason)
    kept = candidates.drop_columns(["raw"]).filter(pa.array(keep))  # raw text is not needed
    return kept, rejects
