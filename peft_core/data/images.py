"""Loading image datasets: class folders, a ZIP of them, or a CSV/JSONL list of (image, label).

Every image is opened with PIL (verified, then decoded) before training is
offered, so a broken file is named now rather than crashing an epoch later.
Without ``skip_bad`` the first problem raises, listing every bad file found so
they can all be fixed at once; with it the bad files go to ``dropped``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from peft_core.data.archives import safe_extract
from peft_core.data.errors import DataError, human_size, short_list
from peft_core.data.examples import LabeledImageExample
from peft_core.data.formats import Drop, LabelKinds, label_text, text_field
from peft_core.data.readers import Skip, open_table
from peft_core.data.text import DroppedRow

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
LIST_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "file_name", "filename", "img")
LABEL_COLUMNS = ("label", "class", "category", "labels")
_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class LoadedImages:
    examples: list[LabeledImageExample]
    labels: list[str]  # sorted class names
    dropped: list[DroppedRow] = field(default_factory=list)  # row: position in the folder or list
    source: str = ""


@dataclass
class _Candidate:
    row: int
    path: Path
    shown: str  # the name the user knows: relative to the folder, or as written in the list
    label: str = ""
    where: str = ""  # "line 3" of a list file


@dataclass
class _Problem:
    candidate: _Candidate
    code: str
    params: dict  # the values its message needs, beyond file/count/files
    reason: str  # short, for the list of all bad files


def load_images(
    path: str | os.PathLike,
    extract_to: str | os.PathLike,
    min_size: int = 8,
    skip_bad: bool = False,
    max_bytes: int = 2 * 2**30,
    max_files: int = 100_000,
) -> LoadedImages:
    """Labeled images from a folder of class folders, a ZIP of one (extracted into ``extract_to``), or a list."""
    path = Path(path)
    if path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
        candidates, dropped, classes = _from_list(path, max_bytes), [], set()
    else:
        root, files = _gather(path, extract_to, max_bytes, max_files, LIST_EXTENSIONS)
        candidates, dropped, classes = _from_class_folders(path.name, root, files, list_folders=path.is_dir())
    good, problems = _inspect_all(candidates, min_size)
    _handle_problems(problems, path.name, skip_bad, dropped)
    labels = sorted(classes | {candidate.label for candidate in candidates})
    usable = Counter(candidate.label for candidate in good)
    empty = [label for label in labels if not usable[label]]
    if empty:
        raise DataError("empty_class", file=path.name, classes=", ".join(empty), extensions=_EXTENSIONS)
    if len(labels) < 2:
        raise DataError("too_few_classes", file=path.name, count=len(labels), classes=", ".join(labels) or "none")
    examples = [LabeledImageExample(str(candidate.path), candidate.label) for candidate in good]
    logger.info(
        "found %d images in %d classes in %s (%d left out)", len(examples), len(labels), path.name, len(dropped)
    )
    return LoadedImages(examples=examples, labels=labels, dropped=dropped, source=path.name)


def load_instance_images(
    path: str | os.PathLike,
    extract_to: str | os.PathLike,
    min_size: int = 64,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> list[str]:
    """The images of a folder or ZIP with no classes (DreamBooth's instance images), sorted.

    With ``skip_bad`` bad images are left out and, when ``skipped`` is given,
    listed in it ("name: why"); without it the first bad image raises, naming all.
    """
    path = Path(path)
    root, files = _gather(path, extract_to, 2 * 2**30, 100_000)
    images = [file for file in files if file.suffix.lower() in IMAGE_EXTENSIONS]
    candidates = [_Candidate(row, root / file, str(file)) for row, file in enumerate(images, start=1)]
    good, problems = _inspect_all(candidates, min_size)
    dropped: list[DroppedRow] = []
    _handle_problems(problems, path.name, skip_bad, dropped)
    for row in dropped:
        logger.warning("skipped %s", row.reason)
        if skipped is not None:
            skipped.append(row.reason)
    if not good:
        raise DataError("no_images", file=path.name, extensions=_EXTENSIONS)
    return sorted(str(candidate.path) for candidate in good)


_EXTENSIONS = ", ".join(IMAGE_EXTENSIONS)


def _gather(
    path: Path, extract_to: str | os.PathLike, max_bytes: int, max_files: int, lists: tuple[str, ...] = ()
) -> tuple[Path, list[PurePosixPath]]:
    """The folder the data lives in, and its files relative to it (junk and hidden files left out)."""
    if not path.exists():
        raise DataError("not_found", file=path.name)
    if path.is_dir():
        files = [file.relative_to(path) for file in _walk(path)]
        if len(files) > max_files:
            raise DataError("too_many_files", file=path.name, count=len(files), limit=max_files)
        total = sum((path / file).stat().st_size for file in files)
        if total > max_bytes:
            raise DataError("too_large", file=path.name, size=human_size(total), limit=human_size(max_bytes))
        return path, [PurePosixPath(file.as_posix()) for file in files]
    if path.suffix.lower() == ".zip":
        target = Path(extract_to)
        extracted = safe_extract(path, target, max_total_bytes=max_bytes, max_files=max_files)
        return target, sorted(PurePosixPath(Path(file).relative_to(target).as_posix()) for file in extracted)
    supported = ", ".join(("a folder", ".zip", *lists))
    raise DataError("unsupported_extension", file=path.name, extension=path.suffix or "(none)", supported=supported)


def _walk(root: Path) -> Iterable[Path]:
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not _hidden(name))  # prunes the walk
        for name in sorted(names):
            if not _hidden(name):
                yield Path(folder, name)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _JUNK or name == "__MACOSX"


def _from_class_folders(
    source: str, root: Path, files: list[PurePosixPath], list_folders: bool
) -> tuple[list[_Candidate], list[DroppedRow], set[str]]:
    """Class = first folder under the data root; a folder wrapping everything (``pets/cat/...``) is looked through."""
    base = _data_root([file for file in files if _wanted(file)])
    candidates, dropped, outside = [], [], []
    for row, file in enumerate(files, start=1):
        if not file.is_relative_to(base):
            dropped.append(DroppedRow(row, f"{file}: outside the folder {base} that holds the classes"))
            continue
        relative = file.relative_to(base)
        if not _wanted(file):
            dropped.append(DroppedRow(row, f"{relative}: not an image ({_EXTENSIONS} are read)"))
        elif len(relative.parts) == 1:
            outside.append(DroppedRow(row, f"{relative}: not inside a class folder"))
        else:
            candidates.append(_Candidate(row, root / file, str(relative), relative.parts[0]))
    if outside and not candidates:
        examples = short_list([row.reason.split(":")[0] for row in outside], 3)
        raise DataError("images_outside_classes", file=source, count=len(outside), examples=examples)
    # a class folder that holds only other files, or nothing, is still a class the user meant
    classes = {
        file.relative_to(base).parts[0]
        for file in files
        if file.is_relative_to(base) and len(file.relative_to(base).parts) > 1
    }
    if list_folders:
        classes |= {entry.name for entry in (root / base).iterdir() if entry.is_dir() and not _hidden(entry.name)}
    return candidates, sorted(dropped + outside, key=lambda row: row.row), classes


def _data_root(images: list[PurePosixPath]) -> PurePosixPath:
    """The deepest folder holding every image that still leaves some of them inside a sub-folder."""
    base = PurePosixPath()
    while images:
        depth = len(base.parts)
        heads = {image.parts[depth] if len(image.parts) > depth + 1 else None for image in images}
        deeper = any(len(image.parts) > depth + 2 for image in images)
        if len(heads) != 1 or None in heads or not deeper:
            return base
        base = base / heads.pop()
    return base


def _wanted(file: PurePosixPath) -> bool:
    return file.suffix.lower() in IMAGE_EXTENSIONS


def _from_list(path: Path, max_bytes: int) -> list[_Candidate]:
    """Rows of a CSV/JSONL/... naming an image (relative to the list's folder) and its label."""
    table = open_table(path, max_bytes)
    image_column = next((name for name in IMAGE_COLUMNS if name in table.columns), None)
    label_column = next((name for name in LABEL_COLUMNS if name in table.columns), None)
    if image_column is None or label_column is None:
        missing = "an image path column" if image_column is None else "a label column"
        wanted = IMAGE_COLUMNS if image_column is None else LABEL_COLUMNS
        raise DataError(
            "missing_columns",
            file=table.name,
            missing=f"{missing} ({' or '.join(wanted)})",
            needed_by="an image list",
            columns=", ".join(table.columns),
        )
    folder = path.parent.resolve()
    kinds = LabelKinds(table.name, table.unit)
    candidates = []
    for row, record in table.rows():
        if isinstance(record, Skip):
            raise DataError("bad_csv", file=table.name, kind=table.kind, line=row, reason=f"the row {record}")
        try:
            image, label = text_field(record, image_column), label_text(record.get(label_column), label_column)
        except Drop as reason:
            raise DataError("bad_csv", file=table.name, kind=table.kind, line=row, reason=str(reason)) from None
        resolved = (folder / image).resolve()
        if not resolved.is_relative_to(folder):
            raise DataError("path_escapes", file=table.name, image=image, unit=table.unit, row=row)
        kinds.add([label], row)
        candidates.append(_Candidate(row, resolved, image, label, where=f"{table.unit} {row}"))
    return candidates


def _inspect_all(candidates: list[_Candidate], min_size: int) -> tuple[list[_Candidate], list[_Problem]]:
    workers = min(8, os.cpu_count() or 1)  # decoding releases the GIL, so threads overlap it
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(lambda candidate: _inspect(candidate, min_size), candidates))
    good = [candidate for candidate, problem in zip(candidates, found) if problem is None]
    return good, [problem for problem in found if problem is not None]


def _inspect(candidate: _Candidate, min_size: int) -> _Problem | None:
    """Open, verify and decode one image; None when it is fine."""
    if not candidate.path.is_file():
        return _Problem(candidate, "missing_image", {"image": candidate.shown, "where": candidate.where}, "missing")
    try:
        with Image.open(candidate.path) as image:
            image.verify()  # checks the structure without decoding
        with Image.open(candidate.path) as image:  # verify() leaves the object unusable; decode a fresh one
            image.load()
            width, height = image.size
    except Image.DecompressionBombError as err:
        return _Problem(candidate, "image_too_large", {"reason": str(err)}, "too many pixels")
    except UnidentifiedImageError:
        return _Problem(candidate, "corrupt_image", {"reason": "not an image file"}, "not an image file")
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # what PIL raises for damaged data
        reason = str(err) or type(err).__name__
        return _Problem(candidate, "corrupt_image", {"reason": reason}, reason)
    if min(width, height) < min_size:
        params = {"width": width, "height": height, "min_size": min_size}
        return _Problem(candidate, "image_too_small", params, f"{width}x{height} pixels")
    return None


def _handle_problems(problems: list[_Problem], source: str, skip_bad: bool, dropped: list[DroppedRow]) -> None:
    if not problems:
        return
    if skip_bad:
        dropped += [
            DroppedRow(problem.candidate.row, f"{problem.candidate.shown}: {problem.reason}") for problem in problems
        ]
        dropped.sort(key=lambda row: row.row)
        return
    first = problems[0]
    listing = "; ".join(f"{problem.candidate.shown} ({problem.reason})" for problem in problems)
    file = source if first.code == "missing_image" else first.candidate.shown
    raise DataError(first.code, file=file, count=len(problems), files=listing, **first.params)
