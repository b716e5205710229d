"""Every problem with a user's data file that the user can fix, as one exception type.

A `DataError` carries a stable ``code`` and the ``params`` its message is built
from. The English messages live in `MESSAGES`, one template per code, filled
only from ``params``, so a translation needs nothing but another table with the
same placeholders (the shape of every `peft_core.errors.UserError`).
"""

from __future__ import annotations

from peft_core.errors import UserError

MESSAGES: dict[str, str] = {
    # reading files
    "not_found": "{file} does not exist. Check the path, or upload the file again.",
    "not_a_file": (
        "{file} is a folder with no data files in it. Choose a data file ({supported}), or a folder that holds them."
    ),
    "unsupported_extension": (
        "{file} has the extension '{extension}', which cannot be read as a dataset. Save it as one of: {supported}."
    ),
    "too_large": "{file} is {size}, above the limit of {limit}. Use a smaller file, or split it into parts.",
    "empty_file": "{file} contains no data rows. Check that you chose the right file and that it was saved.",
    "not_text": (
        "{file} is not a text file ({what}), although its name ends in {extension}. "
        "Export the data as {expected} and upload that."
    ),
    "not_utf8": (
        "{file} is not UTF-8 text: byte {offset} (line {line}) is {byte}{detail}. "
        "Save the file with UTF-8 encoding (in Excel: 'CSV UTF-8'; in most editors: Save with Encoding > UTF-8)."
    ),
    "invalid_json": "{file} is not valid JSON at line {line}, column {column}: {reason}. Fix that line{jsonl_hint}.",
    "bad_json_structure": (
        "{file} holds {found} at the top level; a JSON dataset must be a list of objects "
        '(one per example, like [{{"text": "..."}}, ...]), or use JSON Lines (.jsonl) with one object per line.'
    ),
    "bad_csv": "{file} cannot be read as {kind} at line {line}: {reason}.",
    "dataset_not_found": (
        "The dataset {dataset} could not be found ({reason}). Give a data file, a folder of data files, "
        "or a Hub dataset id like owner/name (owner/name:test for another split), and check the network."
    ),
    "dataset_unreadable": "The dataset {dataset} (split {split}) cannot be read: {reason}.",
    "bad_parquet": "{file} cannot be read as Parquet: {reason}. Export it again, or save it as CSV or JSON Lines.",
    # formats and columns
    "unknown_format": (
        "Cannot tell what kind of dataset {file} is: {why}. Columns found: {columns}. "
        "Each format needs these columns: {formats}. Choose the format yourself, or map your column names."
    ),
    "missing_columns": (
        "{file} is missing the column(s) {missing}, needed by {needed_by}. Columns found: {columns}. "
        "Rename the column in the file, or map one of your columns to it."
    ),
    "bad_column_mapping": "The column mapping names {names}, which {used_by} uses. Columns you can map: {allowed}.",
    "mixed_labels": (
        "{file} mixes number labels and word labels ({examples}). Use one kind for every row, "
        "for example all words (positive/negative) or all numbers (0/1)."
    ),
    "no_usable_rows": (
        "None of the {count} rows in {file} could be used. Most common problem ({reason_count} rows): {reason}."
    ),
    # archives
    "bad_archive": "{file} is not a readable ZIP archive ({reason}). Create the ZIP again and upload it.",
    "zip_slip": (
        "{file} contains the entry '{entry}', which would be written outside the extraction folder. "
        "Nothing was extracted; create the ZIP from inside your data folder, with relative paths."
    ),
    "zip_symlink": (
        "{file} contains the symbolic link '{entry}'; links are not extracted. "
        "Nothing was extracted; put the real files in the ZIP instead."
    ),
    "zip_bomb": "{file} is refused: {why}. Nothing was extracted; upload a smaller archive, or split the data.",
    "too_many_files": "{file} holds {count} files, above the limit of {limit}. Use fewer files, or split the data.",
    # images
    "corrupt_image": (
        "{file} cannot be read as an image ({reason}). Bad files found ({count}): {files}. "
        "Replace or remove them, or choose to skip bad images."
    ),
    "image_too_small": (
        "{file} is {width}x{height} pixels, smaller than {min_size} pixels on a side. Bad files found "
        "({count}): {files}. Replace or remove them, or choose to skip bad images."
    ),
    "image_too_large": (
        "{file} has too many pixels to open safely ({reason}). Bad files found ({count}): {files}. "
        "Resize it, or choose to skip bad images."
    ),
    "missing_image": (
        "{file} lists the image '{image}' ({where}), which does not exist. Bad files found ({count}): "
        "{files}. Image paths are read relative to the folder that holds {file}."
    ),
    "path_escapes": (
        "{file} lists the image path '{image}' ({unit} {row}), which points outside the folder that holds "
        "{file}. Put the images in that folder and use paths relative to it."
    ),
    "no_images": "{file} contains no images ({extensions}). Check that you chose the right folder or ZIP.",
    "too_few_classes": (
        "{file} has {count} class ({classes}); classification needs at least 2. Put the images in one "
        "sub-folder per class (for example cat/ and dog/), or list them in a CSV with a label column."
    ),
    "empty_class": (
        "The class {classes} in {file} has no usable images (readable {extensions} files). "
        "Add images to it, or remove it."
    ),
    "images_outside_classes": (
        "{file} has {count} images that are not inside a class folder (for example {examples}). "
        "Put each image in the sub-folder named after its class."
    ),
}


class DataError(UserError):
    """A problem with the user's data that the user can fix; ``str(err)`` is the English message."""

    messages = MESSAGES


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB': sizes in messages people read."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_list(items: list, limit: int = 5) -> str:
    """'a, b, c and 4 more': a list in a message that stays readable."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
