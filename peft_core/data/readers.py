"""Reading a user's table file (CSV, TSV, JSON, JSON Lines, Parquet, TXT) into rows, checked first.

Before any parsing the file's size is checked with ``os.stat``, and a text
file's bytes are checked for what people upload by mistake: a binary file with
a text extension, UTF-16 from Excel, Latin-1 from old tools. Every error says
where (line, byte offset) and what to do.

The files are parsed here with the standard library and pyarrow rather than
``datasets.load_dataset``, which writes an Arrow cache under the user's home
directory (outside any folder the caller names), reports a bad JSON line
without its line number, and folds a mix of number and word labels into one
column type before we can see it. A folder of data files or a Hub dataset id
goes through ``datasets.load_dataset`` instead (see ``hub_datasets``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from peft_core.data.errors import DataError, human_size
from peft_core.data.hub_datasets import is_dataset_reference, load_rows, numbered
from peft_core.data.reasons import Reason

READABLE = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".json": "JSON",
    ".jsonl": "JSON Lines",
    ".ndjson": "JSON Lines",
    ".parquet": "Parquet",
    ".txt": "plain text",
}
SUPPORTED = ", ".join(ext for ext in READABLE if ext != ".ndjson")

# What people upload under a text name by mistake, by the bytes it starts with.
_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive or an Excel/Word document"),
    (b"PAR1", "a Parquet file"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Word document"),
    (b"SQLite format 3", "an SQLite database"),
)
_SNIFF = 8192
_BLOCK = 1 << 20


class Skip(Reason):
    """A row the reader could not turn into a record; the reason says why."""


Row = tuple[int, "dict | Skip"]  # (1-based line or row number, record or reason)


@dataclass
class Table:
    """A checked file: its columns (first-seen order) and a way to walk its rows again."""

    name: str  # the file name as the user knows it
    kind: str  # READABLE's description, e.g. "JSON Lines"
    columns: list[str]
    row_count: int
    rows: Callable[[], Iterator[Row]]
    unit: str = "line"  # what row numbers count: "line" of the file, or "row" (JSON list item, Parquet row)


def open_table(path: str | os.PathLike, max_bytes: int) -> Table:
    """Check ``path`` and read its columns; raises `DataError` for anything the user must fix."""
    if is_dataset_reference(path):
        name, columns, records = load_rows(path)
        return Table(name=name, kind="dataset", columns=columns, row_count=len(records),
                     rows=lambda: numbered(records), unit="row")
    path = Path(path)
    name = path.name
    if not path.exists():
        raise DataError("not_found", file=name)
    if path.is_dir():
        raise DataError("not_a_file", file=name, supported=SUPPORTED)
    extension = path.suffix.lower()
    if extension not in READABLE:
        raise DataError("unsupported_extension", file=name, extension=extension or "(none)", supported=SUPPORTED)
    size = os.stat(path).st_size  # before reading a single byte
    if size > max_bytes:
        raise DataError("too_large", file=name, size=human_size(size), limit=human_size(max_bytes))
    if size == 0:
        raise DataError("empty_file", file=name)
    kind = READABLE[extension]
    if extension == ".parquet":
        rows, columns, unit = *_parquet_rows(path, name), "row"
    else:
        check_text(path, name, extension, kind)
        rows, columns, unit = _text_rows(path, name, extension)
    count = 0
    seen = dict.fromkeys(columns or ())
    for _, record in rows():
        count += 1
        if columns is None and isinstance(record, dict):
            seen.update(dict.fromkeys(record))
    if count == 0:
        raise DataError("empty_file", file=name)
    return Table(name=name, kind=kind, columns=list(seen), row_count=count, rows=rows, unit=unit)


def check_text(path: Path, name: str, extension: str, kind: str) -> None:
    """Refuse binary content and anything that is not UTF-8, naming the first bad byte."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF)
    for bom, encoding in ((b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if head.startswith(bom):
            raise DataError(
                "not_utf8",
                file=name,
                offset=0,
                line=1,
                byte=f"0x{head[0]:02x}",
                detail=f" (the file is saved as {encoding})",
            )
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataError("not_text", file=name, what=f"it is {what}", extension=extension, expected=kind)
    if b"\x00" in head:
        raise DataError("not_text", file=name, what="it holds binary data", extension=extension, expected=kind)
    _check_utf8(path, name)


def _check_utf8(path: Path, name: str) -> None:
    offset, line, carry = 0, 1, b""  # offset and line where `carry` starts
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            data = carry + block
            try:
                data.decode("utf-8")
                good, carry = data, b""
            except UnicodeDecodeError as err:
                cut_at_end = err.reason == "unexpected end of data" and len(data) - err.start < 4
                if not cut_at_end:  # a real error, not a character split across two blocks
                    _raise_not_utf8(name, data, err.start, offset, line)
                good, carry = data[: err.start], data[err.start :]
            line += good.count(b"\n")
            offset += len(good)
    if carry:
        _raise_not_utf8(name, carry, 0, offset, line)


def _raise_not_utf8(name: str, data: bytes, index: int, offset: int, line: int) -> None:
    byte = data[index]
    hint = " (perhaps the file is Latin-1 or Windows-1252)" if byte >= 0x80 else ""
    raise DataError(
        "not_utf8",
        file=name,
        offset=offset + index,
        line=line + data[:index].count(b"\n"),
        byte=f"0x{byte:02x}",
        detail=hint,
    )


def _text_rows(path: Path, name: str, extension: str) -> tuple[Callable[[], Iterator[Row]], list[str] | None, str]:
    if extension in (".jsonl", ".ndjson"):
        return (lambda: _jsonl_rows(path, name)), None, "line"
    if extension == ".json":
        return _json_rows(path, name)
    if extension == ".txt":
        return (lambda: _txt_rows(path)), ["text"], "line"
    delimiter = "\t" if extension == ".tsv" else ","
    header = _csv_header(path, name, delimiter)
    return (lambda: _csv_rows(path, name, delimiter, header)), header, "line"


def _jsonl_rows(path: Path, name: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    "invalid_json",
                    file=name,
                    line=number,
                    column=err.colno,
                    reason=err.msg,
                    jsonl_hint=" (in JSON Lines every line must be one complete JSON object)",
                ) from None
            yield number, _as_record(value)


def _json_rows(path: Path, name: str) -> tuple[Callable[[], Iterator[Row]], None, str]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and err.lineno > 1:  # one object per line: JSON Lines named .json
            return (lambda: _jsonl_rows(path, name)), None, "line"
        raise DataError(
            "invalid_json", file=name, line=err.lineno, column=err.colno, reason=err.msg, jsonl_hint=""
        ) from None
    items = _json_items(document)
    if items is None:
        raise DataError("bad_json_structure", file=name, found=_describe(document))
    return (lambda: ((index, _as_record(item)) for index, item in enumerate(items, start=1))), None, "row"


def _json_items(document: object) -> list | None:
    """The list of examples: the document itself, or the one list inside ``{"data": [...]}``."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        lists = [value for value in document.values() if isinstance(value, list)]
        if len(lists) == 1 and lists[0] and all(isinstance(item, dict) for item in lists[0]):
            return lists[0]
    return None


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"an object with keys {', '.join(map(str, list(value)[:8]))}"
    return f"a single {type(value).__name__} value"


def _as_record(value: object) -> dict | Skip:
    if isinstance(value, dict):
        return value
    return Skip("json_not_object", what=_json_type(value))


def _json_type(value: object) -> str:
    names = {list: "list", str: "string", bool: "true/false", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _txt_rows(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text.strip():  # blank lines separate paragraphs; they are not rows
                yield number, {"text": text}


@contextlib.contextmanager
def _csv_field_limit():
    # The csv module refuses fields over 128 KiB by default; a long document is one field.
    # The limit is process-wide, so it is put back afterwards.
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_header(path: Path, name: str, delimiter: str) -> list[str]:
    with _csv_field_limit(), open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next((row for row in reader if row), None)
        except csv.Error as err:
            raise DataError(
                "bad_csv", file=name, kind=_kind(delimiter), line=reader.line_num, reason=_quoting(err)
            ) from None
    if header is None:
        raise DataError("empty_file", file=name)
    names = [cell.strip() or f"column_{index}" for index, cell in enumerate(header, start=1)]
    duplicates = sorted({cell for cell in names if names.count(cell) > 1})
    if duplicates:
        reason = f"the column name {duplicates[0]!r} appears more than once in the header"
        raise DataError("bad_csv", file=name, kind=_kind(delimiter), line=1, reason=reason)
    return names


def _csv_rows(path: Path, name: str, delimiter: str, header: list[str]) -> Iterator[Row]:
    with _csv_field_limit(), open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        started = False
        while True:
            first_line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(
                    "bad_csv", file=name, kind=_kind(delimiter), line=reader.line_num, reason=_quoting(err)
                ) from None
            if not cells:
                continue
            if not started:  # the header
                started = True
                continue
            if len(cells) != len(header):
                yield first_line, Skip("csv_fields", count=len(cells), header=len(header))
            else:
                yield first_line, dict(zip(header, cells))


def _quoting(err: csv.Error) -> str:
    return f"{err} (a quote that is opened and never closed is the usual cause)"


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _parquet_rows(path: Path, name: str) -> tuple[Callable[[], Iterator[Row]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    damaged = (OSError, ValueError, pa.ArrowException)  # what pyarrow raises for a damaged file

    with open(path, "rb") as handle:
        if handle.read(4) != b"PAR1":
            raise DataError("bad_parquet", file=name, reason="it does not start like a Parquet file")
    try:
        columns = list(pq.ParquetFile(path).schema_arrow.names)
    except damaged as err:
        raise DataError("bad_parquet", file=name, reason=str(err).splitlines()[0]) from None

    def rows() -> Iterator[Row]:
        number = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record
        except damaged as err:
            raise DataError("bad_parquet", file=name, reason=str(err).splitlines()[0]) from None

    return rows, columns
