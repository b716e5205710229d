"""Loading a text dataset file: find its format, map its columns, turn rows into examples.

``load_text("reviews.csv")`` reads the file (`readers`), works out which of
`TEXT_FORMATS` it is from its column names, and converts each row (`formats`).
Rows that cannot be used are kept out and listed with the reason; problems
with the whole file raise `DataError`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from peft_core.data.errors import DataError
from peft_core.data.formats import FORMATS, Drop, LabelKinds, TextFormat
from peft_core.data.readers import Skip, Table, open_table

logger = logging.getLogger(__name__)

TEXT_FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text",
                "classification", "token_classification", "seq2seq")  # fmt: skip
assert set(TEXT_FORMATS) == set(FORMATS)


@dataclass
class DroppedRow:
    row: int  # 1-based line of the file (row of a JSON list or Parquet file)
    reason: str


@dataclass
class LoadedText:
    examples: list  # ChatExample, TextExample, ... in file order
    format: str
    dropped: list[DroppedRow] = field(default_factory=list)
    source: str = ""  # the file name as the user knows it
    columns: list[str] = field(default_factory=list)  # the file's own column names


def load_text(
    path: str | os.PathLike,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    max_bytes: int = 512 * 2**20,
) -> LoadedText:
    """Read a CSV/TSV/JSON/JSONL/Parquet/TXT file as examples of ``format`` ("auto" detects it).

    ``columns`` maps the format's column names to the file's, e.g. ``{"text": "review"}``.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {', '.join(TEXT_FORMATS)}, got {format!r}")
    mapping = dict(columns or {})
    table = open_table(path, max_bytes)
    _check_mapping(table, format, mapping)
    available = _columns_after_mapping(table.columns, mapping)
    chosen = format if format != "auto" else detect_format(table.name, available)
    spec = FORMATS[chosen]
    missing = [name for name in spec.required if name not in available]
    if missing:
        raise DataError(
            "missing_columns",
            file=table.name,
            missing=", ".join(missing),
            needed_by=f"the {chosen} format",
            columns=_listing(table.columns),
        )
    examples, dropped = _convert(table, spec, mapping)
    logger.info("read %d %s examples from %s (%d rows left out)", len(examples), chosen, table.name, len(dropped))
    return LoadedText(examples=examples, format=chosen, dropped=dropped, source=table.name, columns=table.columns)


def detect_format(file: str, columns: list[str]) -> str:
    """The one format whose columns are all in ``columns``; a format that another one extends gives way."""
    present = set(columns)
    matches = [spec for spec in FORMATS.values() if set(spec.required) <= present]
    # text + label is classification, not plain text with a stray column
    matches = [spec for spec in matches if not any(set(spec.required) < set(other.required) for other in matches)]
    if len(matches) == 1:
        return matches[0].name
    if matches:
        why = f"it has the columns of more than one format ({', '.join(spec.name for spec in matches)})"
    else:
        why = "no format has all its columns in the file"
    raise DataError("unknown_format", file=file, why=why, columns=_listing(columns), formats=required_columns())


def required_columns() -> str:
    """'alpaca: instruction + output; messages: messages; ...' for messages and the UI."""
    return "; ".join(f"{spec.name}: {' + '.join(spec.required)}" for spec in FORMATS.values())


def _listing(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "(none)"


def _check_mapping(table: Table, format: str, mapping: dict[str, str]) -> None:
    specs = [FORMATS[format]] if format != "auto" else list(FORMATS.values())
    known = list(dict.fromkeys(name for spec in specs for name in spec.required + spec.optional))
    unknown = [name for name in mapping if name not in known]
    if unknown:
        used_by = f"the {format} format" if format != "auto" else "no dataset format"
        raise DataError("bad_column_mapping", names=", ".join(unknown), used_by=used_by, allowed=", ".join(known))
    absent = [source for source in mapping.values() if source not in table.columns]
    if absent:
        raise DataError(
            "missing_columns",
            file=table.name,
            missing=", ".join(absent),
            needed_by="your column mapping",
            columns=_listing(table.columns),
        )


def _columns_after_mapping(columns: list[str], mapping: dict[str, str]) -> list[str]:
    # A mapped column takes the format's name; a file column of that name, and the source column, step aside.
    hidden = set(mapping) | set(mapping.values())
    return [name for name in columns if name not in hidden] + list(mapping)


def _renamed(record: dict, mapping: dict[str, str]) -> dict:
    if not mapping:
        return record
    hidden = set(mapping) | set(mapping.values())
    renamed = {key: value for key, value in record.items() if key not in hidden}
    renamed.update({name: record[source] for name, source in mapping.items() if source in record})
    return renamed


def _convert(table: Table, spec: TextFormat, mapping: dict[str, str]) -> tuple[list, list[DroppedRow]]:
    examples, dropped = [], []
    labels = LabelKinds(table.name, table.unit)
    for number, record in table.rows():
        if isinstance(record, Skip):
            dropped.append(DroppedRow(number, record))
            continue
        try:
            example = spec.convert(_renamed(record, mapping))
        except Drop as drop:
            dropped.append(DroppedRow(number, drop.reason))
            continue
        if spec.labels is not None:
            labels.add(spec.labels(example), number)
        examples.append(example)
    if not examples:
        reason, count = Counter(row.reason for row in dropped).most_common(1)[0]
        raise DataError("no_usable_rows", file=table.name, count=table.row_count, reason=reason, reason_count=count)
    return examples, dropped
