"""Datasets that are not one file: a Hub dataset id, or a downloaded dataset folder.

``datasets.load_dataset`` does what it is best at here: it resolves a Hub id
(``tatsu-lab/alpaca``, or ``tatsu-lab/alpaca:test`` for another split) or a
folder of data files (CSV, JSON Lines, Parquet shards, as a Hub dataset repo
holds them) into one table. Its Arrow cache goes to a temporary folder that
is deleted once the rows are in memory, so nothing is left in the user's home
directory. Single files keep going through ``readers`` (which can say which
line of the file is wrong).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from peft_core.data.errors import DataError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


def is_dataset_reference(path: str | os.PathLike) -> bool:
    """A folder, or a Hub id that is no local path and has no file extension."""
    text = str(path)
    if os.path.isdir(text):
        return True
    return not os.path.exists(text) and bool(HUB_ID.match(text)) and not Path(text.split(":")[0]).suffix


def load_rows(reference: str | os.PathLike) -> tuple[str, list[str], list[dict]]:
    """(name, columns, records) of one split of a dataset folder or Hub dataset id."""
    import datasets

    text = str(reference)
    source, _, split = text.partition(":") if not os.path.isdir(text) else (text, "", "")
    split = split or "train"
    name = Path(source).name if os.path.isdir(source) else source
    with tempfile.TemporaryDirectory(prefix="peft-studio-datasets-") as cache:
        try:
            table = datasets.load_dataset(source, split=split, cache_dir=cache)
        except FileNotFoundError as err:
            if os.path.isdir(source):
                raise DataError("not_a_file", file=name, supported="CSV, JSON, JSON Lines, Parquet, TXT") from None
            raise DataError("dataset_not_found", dataset=name, reason=_first_line(err)) from None
        except ValueError as err:  # an unknown split, or files load_dataset cannot read
            raise DataError("dataset_unreadable", dataset=name, split=split, reason=_first_line(err)) from None
        except (ConnectionError, OSError) as err:
            raise DataError("dataset_not_found", dataset=name, reason=_first_line(err)) from None
        columns = list(table.column_names)
        records = table.to_list()
    if not records:
        raise DataError("empty_file", file=f"{name} (split {split})")
    return name, columns, records


def numbered(records: list[dict]) -> Iterator[tuple[int, dict]]:
    yield from enumerate(records, start=1)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
