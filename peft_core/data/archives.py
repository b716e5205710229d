"""Extracting a user's ZIP without trusting it.

Every entry is checked before a byte is written: no absolute paths or ``..``
that leave the target ("zip slip"), no symbolic links, no more files or bytes
than allowed, no suspicious compression ratio ("zip bomb"). Then the entries
are written into a hidden staging folder inside the target, counting the bytes
actually inflated (the sizes an archive declares can lie; `zipfile` also stops
at the declared size, and the CRC check then fails), and moved into place only
when all of them succeeded; on any error the staging folder is removed.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from peft_core.data.errors import DataError, human_size

logger = logging.getLogger(__name__)

_JUNK_DIRS = {"__MACOSX"}  # resource forks that macOS's Compress adds
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_RATIO_FLOOR = 1 << 20  # below 1 MiB in all, a high ratio (a blank text file) is harmless
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

Member = tuple[zipfile.ZipInfo, PurePosixPath]  # an entry and where it goes, relative to the target


def safe_extract(
    zip_path: str | os.PathLike,
    target_dir: str | os.PathLike,
    max_total_bytes: int = 2 * 2**30,
    max_files: int = 100_000,
    max_ratio: float = 200.0,
) -> list[str]:
    """Extract ``zip_path`` into ``target_dir`` (created if needed); returns the extracted files' paths."""
    zip_path, target = Path(zip_path), Path(target_dir)
    name = zip_path.name
    if not zip_path.exists():
        raise DataError("not_found", file=name)
    if not zip_path.is_file():
        raise DataError("bad_archive", file=name, reason="it is a folder")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError("bad_archive", file=name, reason=str(err) or type(err).__name__) from None
    with archive:
        members = plan_members(archive, name, target, max_files)
        _check_sizes(members, name, max_total_bytes, max_ratio)
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target))
        try:
            _write_all(archive, members, staging, name, max_total_bytes)
            paths = _move_into(staging, members, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:  # it held only the staging folder
                shutil.rmtree(target, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("extracted %d files from %s into %s", len(paths), name, target)
    return paths


def plan_members(archive: zipfile.ZipFile, name: str, target: Path, max_files: int) -> list[Member]:
    """The entries worth extracting, each checked; raises on the first unsafe one."""
    root = target.resolve()
    members: list[Member] = []
    for info in archive.infolist():
        entry = info.filename.replace("\\", "/")  # Windows tools sometimes write backslashes
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError("zip_symlink", file=name, entry=info.filename)
        if entry.startswith("/") or _DRIVE.match(entry):
            raise DataError("zip_slip", file=name, entry=info.filename)
        relative = posixpath.normpath(entry)
        if relative == ".." or relative.startswith("../") or not _inside(root, root / relative):
            raise DataError("zip_slip", file=name, entry=info.filename)
        if info.is_dir() or entry.endswith("/") or _is_junk(PurePosixPath(relative)):
            continue
        if info.flag_bits & 0x1:
            raise DataError("bad_archive", file=name, reason=f"{info.filename} is password-protected")
        members.append((info, PurePosixPath(relative)))
        if len(members) > max_files:
            raise DataError("too_many_files", file=name, count=f"more than {max_files}", limit=max_files)
    return members


def _inside(root: Path, path: Path) -> bool:
    # resolve() follows links already in the target, so a link there cannot carry an entry out
    return path.resolve().is_relative_to(root)


def _is_junk(path: PurePosixPath) -> bool:
    return any(part in _JUNK_DIRS for part in path.parts) or path.name in _JUNK_FILES or path.name.startswith("._")


def _check_sizes(members: list[Member], name: str, max_total_bytes: int, max_ratio: float) -> None:
    declared = sum(info.file_size for info, _ in members)
    if declared > max_total_bytes:
        why = f"its files add up to {human_size(declared)}, above the limit of {human_size(max_total_bytes)}"
        raise DataError("zip_bomb", file=name, why=why)
    compressed = sum(info.compress_size for info, _ in members)
    if declared > _RATIO_FLOOR and declared > max_ratio * max(compressed, 1):
        ratio = declared / max(compressed, 1)
        why = (
            f"it expands {ratio:.0f} times ({human_size(compressed)} to {human_size(declared)}), "
            f"more than the {max_ratio:g} times real data does"
        )
        raise DataError("zip_bomb", file=name, why=why)


def _write_all(archive: zipfile.ZipFile, members: list[Member], staging: Path, name: str, limit: int) -> None:
    written = 0
    for info, relative in members:
        destination = staging / relative
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(destination, "wb") as out:
                size = 0
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    written += len(chunk)
                    if size > info.file_size or written > limit:  # the archive lied about its sizes
                        why = f"{info.filename} inflates past the size its header declares"
                        if written > limit:
                            why = f"its contents inflate past the limit of {human_size(limit)}"
                        raise DataError("zip_bomb", file=name, why=why)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            raise DataError("bad_archive", file=name, reason=f"{info.filename}: {err}") from None
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            reason = f"{info.filename} is both a file and a folder in the archive"
            raise DataError("bad_archive", file=name, reason=reason) from None


def _move_into(staging: Path, members: list[Member], target: Path) -> list[str]:
    moved: list[Path] = []
    try:
        for relative in dict.fromkeys(relative for _, relative in members):  # an entry may appear twice
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, destination)
            moved.append(destination)
    except BaseException:  # e.g. the disk filled up: take back what this call put there
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    return [str(path) for path in moved]
