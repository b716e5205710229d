"""Image datasets and ZIP uploads: class folders found, every bad image named, hostile archives refused."""

from __future__ import annotations

import shutil
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from peft_core.data import DataError, LabeledImageExample, load_images, load_instance_images, safe_extract

SHAPES = Path(__file__).resolve().parent.parent / "assets" / "samples" / "shapes"


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def png(path: Path, size: int = 16, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def make_zip(path: Path, entries: dict) -> Path:
    """entries: name -> bytes, or a ZipInfo-ready (name, bytes, external_attr) tuple."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if isinstance(data, tuple):
                data, info.external_attr, info.create_system = data[0], data[1], 3
            archive.writestr(info, data)
    return path


def raises(code: str, function, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        function(*args, **kwargs)
    assert caught.value.code == code, str(caught.value)
    return caught.value


def class_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 16) -> Path:
    for label in classes:
        for index in range(per_class):
            png(root / label / f"{label}{index}.png", size)
    return root


# --- image datasets -------------------------------------------------------------------------


def test_sample_class_folder(tmp_path):
    loaded = load_images(SHAPES, tmp_path / "unused")
    assert loaded.labels == ["circle", "square", "triangle"]
    assert len(loaded.examples) == 18 and loaded.dropped == [] and loaded.source == "shapes"
    assert loaded.examples[0] == LabeledImageExample(str(SHAPES / "circle" / "circle_0.png"), "circle")
    assert not (tmp_path / "unused").exists()  # a folder is read where it is


def test_zip_of_a_class_folder_is_extracted_and_looked_through(tmp_path):
    entries = {f"shapes/{p.parent.name}/{p.name}": p.read_bytes() for p in SHAPES.rglob("*.png")}
    entries |= {"__MACOSX/shapes/._circle_0.png": b"junk", "shapes/.DS_Store": b"junk", "shapes/README.txt": b"hi"}
    archive = make_zip(tmp_path / "upload.zip", entries)
    target = tmp_path / "extracted"
    loaded = load_images(archive, target)
    assert loaded.labels == ["circle", "square", "triangle"] and len(loaded.examples) == 18
    assert all(
        Path(example.path).is_relative_to(target) and Path(example.path).is_file() for example in loaded.examples
    )
    assert [row.reason for row in loaded.dropped] == [
        "README.txt: not an image (.png, .jpg, .jpeg, .webp, .bmp, .gif are read)"
    ]
    assert not (target / "__MACOSX").exists() and not (target / "shapes" / ".DS_Store").exists()
    assert listing(tmp_path) == sorted(["upload.zip", "extracted", *(f"extracted/{p}" for p in listing(target))])
    assert listing(target)[:2] == ["shapes", "shapes/README.txt"]  # only what the archive held, no staging left


def test_csv_list_of_images(tmp_path):
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png")
    png(tmp_path / "imgs" / "c.png")
    (tmp_path / "labels.csv").write_text("file_name,label\nimgs/a.png,1\nimgs/b.png,0\nimgs/c.png,1\n")
    loaded = load_images(tmp_path / "labels.csv", tmp_path / "unused")
    assert loaded.labels == ["0", "1"]
    assert [Path(example.path).name for example in loaded.examples] == ["a.png", "b.png", "c.png"]


def test_list_pointing_outside_its_folder(tmp_path):
    png(tmp_path / "secret.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "list.csv").write_text("image,label\n../secret.png,x\n")
    err = raises("path_escapes", load_images, tmp_path / "data" / "list.csv", tmp_path / "out")
    assert "../secret.png" in str(err) and "line 2" in str(err)
    (tmp_path / "data" / "abs.csv").write_text(f"image,label\n{tmp_path / 'secret.png'},x\n")
    raises("path_escapes", load_images, tmp_path / "data" / "abs.csv", tmp_path / "out")


def test_list_naming_a_missing_image(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "list.jsonl").write_text('{"image": "a.png", "label": "x"}\n{"image": "gone.png", "label": "y"}\n')
    err = raises("missing_image", load_images, tmp_path / "list.jsonl", tmp_path / "out")
    assert "gone.png" in str(err) and "line 2" in str(err)


def test_bad_images_are_all_listed(tmp_path):
    root = class_folder(tmp_path / "data")
    (root / "cat" / "notes.png").write_text("this is text, not a picture")
    png(root / "dog" / "tiny.png", size=1)
    err = raises("corrupt_image", load_images, root, tmp_path / "out")
    assert err.params["file"] == "cat/notes.png" and err.params["count"] == 2
    assert "cat/notes.png (not an image file)" in str(err) and "dog/tiny.png (1x1 pixels)" in str(err)
    loaded = load_images(root, tmp_path / "out", skip_bad=True)
    assert len(loaded.examples) == 6
    assert sorted(row.reason for row in loaded.dropped) == [
        "cat/notes.png: not an image file",
        "dog/tiny.png: 1x1 pixels",
    ]


def test_a_tiny_image(tmp_path):
    root = class_folder(tmp_path / "data")
    png(root / "dog" / "dot.png", size=1)
    err = raises("image_too_small", load_images, root, tmp_path / "out")
    assert "dog/dot.png is 1x1 pixels, smaller than 8" in str(err)


def test_a_truncated_image(tmp_path):
    root = class_folder(tmp_path / "data", size=64)
    data = (root / "cat" / "cat0.png").read_bytes()
    (root / "cat" / "cat0.png").write_bytes(data[: len(data) // 2])
    assert raises("corrupt_image", load_images, root, tmp_path / "out").params["file"] == "cat/cat0.png"


def test_class_problems(tmp_path):
    one = class_folder(tmp_path / "one", classes=("cat",))
    assert "1 class (cat)" in str(raises("too_few_classes", load_images, one, tmp_path / "o"))
    empty = class_folder(tmp_path / "empty")
    (empty / "bird").mkdir()
    assert raises("empty_class", load_images, empty, tmp_path / "o").params["classes"] == "bird"
    flat = tmp_path / "flat"
    for index in range(3):
        png(flat / f"{index}.png")
    assert raises("images_outside_classes", load_images, flat, tmp_path / "o").params["count"] == 3
    bad_only = class_folder(tmp_path / "bad_only")
    for path in (bad_only / "dog").iterdir():
        path.write_text("broken")
    raises("empty_class", load_images, bad_only, tmp_path / "o", skip_bad=True)


def test_folder_limits(tmp_path):
    root = class_folder(tmp_path / "data")
    raises("too_many_files", load_images, root, tmp_path / "o", max_files=5)
    raises("too_large", load_images, root, tmp_path / "o", max_bytes=100)
    raises("not_found", load_images, tmp_path / "nothing", tmp_path / "o")


def test_instance_images(tmp_path):
    folder = tmp_path / "dog"
    for index in (2, 0, 1):
        png(folder / f"{index}.jpg", size=64)
    (folder / "notes.txt").write_text("ignored")
    assert load_instance_images(folder, tmp_path / "o") == [str(folder / f"{i}.jpg") for i in range(3)]
    archive = make_zip(tmp_path / "dog.zip", {f"dog/{p.name}": p.read_bytes() for p in folder.glob("*.jpg")})
    paths = load_instance_images(archive, tmp_path / "extracted")
    assert [Path(path).name for path in paths] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(Path(path).is_relative_to(tmp_path / "extracted") for path in paths)
    raises("image_too_small", load_instance_images, SHAPES / "circle", tmp_path / "o")  # 32 px < 64
    raises("no_images", load_instance_images, folder, tmp_path / "o", min_size=128, skip_bad=True)


# --- ZIP extraction -------------------------------------------------------------------------


def test_safe_extract_writes_the_files(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"top/": b"", "top/a.txt": b"A", "top/sub/../b.txt": b"B", "c.txt": b"C"})
    paths = safe_extract(archive, tmp_path / "out")
    assert paths == [str(tmp_path / "out" / name) for name in ("top/a.txt", "top/b.txt", "c.txt")]
    assert listing(tmp_path / "out") == ["c.txt", "top", "top/a.txt", "top/b.txt"]


@pytest.mark.parametrize(
    ("entries", "code", "entry"),
    [
        ({"ok.txt": b"fine", "../evil.txt": b"x"}, "zip_slip", "../evil.txt"),
        ({"ok.txt": b"fine", "a/../../evil.txt": b"x"}, "zip_slip", "a/../../evil.txt"),
        ({"ok.txt": b"fine", "/tmp/evil.txt": b"x"}, "zip_slip", "/tmp/evil.txt"),
        ({"ok.txt": b"fine", "..\\evil.txt": b"x"}, "zip_slip", "..\\evil.txt"),
        ({"ok.txt": b"fine", "link": (b"/etc/passwd", (stat.S_IFLNK | 0o777) << 16)}, "zip_symlink", "link"),
    ],
)
def test_hostile_entries_are_refused_before_writing(tmp_path, entries, code, entry):
    archive = make_zip(tmp_path / "bad.zip", entries)
    before = listing(tmp_path)
    err = raises(code, safe_extract, archive, tmp_path / "out")
    assert err.params["entry"] == entry and entry in str(err)
    assert listing(tmp_path) == before  # not even the target folder was left behind


def test_zip_bombs(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 * 2**20)})
    assert archive.stat().st_size < 100_000
    before = listing(tmp_path)
    assert "expands" in str(raises("zip_bomb", safe_extract, archive, tmp_path / "out"))
    small = make_zip(tmp_path / "small.zip", {"a.txt": b"x" * 5000})
    err = raises("zip_bomb", safe_extract, small, tmp_path / "out", max_total_bytes=1000)
    assert "above the limit of 1000 bytes" in str(err)
    assert listing(tmp_path) == sorted([*before, "small.zip"])
    many = make_zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(5)})
    raises("too_many_files", safe_extract, many, tmp_path / "out", max_files=3)


def test_sizes_that_lie_are_caught_while_writing(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"first.txt": b"ok", "big.txt": b"y" * 5000})
    data = bytearray(archive.read_bytes())
    # declare big.txt as 10 bytes in both the local header and the central directory
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.index(signature, data.index(signature) + 1)
        struct.pack_into("<I", data, start + offset, 10)
    archive.write_bytes(bytes(data))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    err = raises("bad_archive", safe_extract, archive, target)
    assert "big.txt" in str(err)
    assert listing(target) == ["keep.txt"]  # first.txt, already inflated, was taken back too


def test_links_already_in_the_target_cannot_carry_entries_out(tmp_path):
    (tmp_path / "outside").mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "data").symlink_to(tmp_path / "outside")
    archive = make_zip(tmp_path / "a.zip", {"data/x.txt": b"x"})
    raises("zip_slip", safe_extract, archive, target)
    assert listing(tmp_path / "outside") == []


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_text("not a zip")
    raises("bad_archive", safe_extract, tmp_path / "fake.zip", tmp_path / "out")
    archive = make_zip(tmp_path / "cut.zip", {"a.txt": b"hello" * 100})
    archive.write_bytes(archive.read_bytes()[:-30])
    raises("bad_archive", safe_extract, archive, tmp_path / "out")
    raises("not_found", safe_extract, tmp_path / "missing.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failing_image_zip_leaves_the_target_clean(tmp_path):
    entries = {
        f"{label}/{i}.png": png(tmp_path / "src" / f"{label}{i}.png").read_bytes()
        for label in ("a", "b")
        for i in range(2)
    }
    entries["../escape.png"] = entries["a/0.png"]
    archive = make_zip(tmp_path / "up.zip", entries)
    shutil.rmtree(tmp_path / "src")
    raises("zip_slip", load_images, archive, tmp_path / "out")
    assert listing(tmp_path) == ["up.zip"]
