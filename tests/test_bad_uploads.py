"""Bad input reaches the page as a clear message: each case goes through the app's own handler (/check_config).

The engine-level checks have their own tests (test_data_text, test_data_images,
test_run_config, test_bad_input); here the point is that what a user sends
through the app ends as a message naming the problem, not a stack trace.
"""

from __future__ import annotations

import builtins
import io
import stat
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import yaml
from PIL import Image
from tiny_runs import SAMPLES

from pages import api, common


@pytest.fixture(autouse=True)
def _runs(tmp_path):
    common.configure(tmp_path / "runs", single_user=True)
    yield
    common.configure(tmp_path / "runs", single_user=True)


def png(size: int = 32, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def image_zip(path: Path, extra: dict) -> Path:
    """A class-per-folder ZIP (cat/, dog/) with ``extra`` entries: name -> bytes, or (bytes, external_attr)."""
    entries = {f"{label}/{label}{i}.png": png(color=(i * 40, 90, 50)) for label in ("cat", "dog") for i in range(3)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**entries, **extra}.items():
            info = zipfile.ZipInfo(name)
            if isinstance(data, tuple):
                data, info.external_attr = data
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def text_file(name: str, data: bytes | str):
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    return make


def zip_file(extra: dict):
    return lambda folder: image_zip(folder / "images.zip", extra)


def config_yaml(model_dirs, task="causal_lm", model="llama", method=None, **sections) -> str:
    data = {"task": task, "model": {"name_or_path": model_dirs.get(model, model)},
            "method": method or {"name": "lora", "r": 4},
            "data": {"train": str(SAMPLES / "alpaca.jsonl"), "max_length": 64},
            "training": {"output_dir": "ignored", "max_steps": 2}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return yaml.safe_dump(data)


LLM = {}
IMAGES = {"task": "image_cls", "model": "vit"}
# (name, the data file to upload (or None), config changes, what the message must say)
CASES = [
    ("empty file", text_file("empty.jsonl", ""), LLM, "contains no data rows"),
    ("binary file named .jsonl", text_file("data.jsonl", bytes(range(256)) * 4), LLM, "is not a text file"),
    ("invalid JSON on line 3", text_file("bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": oops}\n'), LLM,
     "not valid JSON at line 3"),
    ("missing columns", text_file("x.jsonl", '{"text": "a"}\n'), {"data": {"format": "alpaca"}},
     "missing the column(s) instruction"),
    ("labels of mixed types", text_file("m.csv", "text,label\ngood,positive\nbad,0\n"),
     {"task": "seq_cls", "model": "bert"}, "mixes number labels and word labels"),
    ("a ZIP bomb", zip_file({"cat/zeros.png": bytes(600 * 2**20)}), IMAGES, "is refused"),
    ("a ZIP entry with ../", zip_file({"../evil.png": png()}), IMAGES, "outside the extraction folder"),
    ("a ZIP entry with an absolute path", zip_file({"/tmp/evil.png": png()}), IMAGES, "outside the extraction folder"),
    ("a symlink inside a ZIP", zip_file({"cat/link.png": (b"/etc/passwd", (stat.S_IFLNK | 0o777) << 16)}), IMAGES,
     "symbolic link"),
    ("a corrupt image", zip_file({"cat/broken.png": png()[:60]}), IMAGES, "cannot be read as an image"),
    ("a 1x1 image", zip_file({"dog/dot.png": png(size=1)}), IMAGES, "1x1 pixels"),
    ("a non-image with an image extension", zip_file({"cat/notes.png": b"these are my notes"}), IMAGES,
     "not an image file"),
    ("an unknown model id", None, {"model": "nobody/no-such-model"}, "could not be loaded"),
    ("a model id with ../", None, {"model": "../../etc"}, "is not a preset, a model folder here, or a Hub id"),
    ("a model id with too many parts", None, {"model": "a/b/c"}, "a Hub id has one '/' at most"),
    ("a server folder as the model", None, {"model": "/etc"}, "is not a model folder"),
    ("r = 0", None, {"method": {"name": "lora", "r": 0}}, "r must be a positive whole number"),
    ("lr = NaN", None, {"training": {"learning_rate": float("nan")}}, "training.learning_rate must be a number"),
    ("batch 0", None, {"training": {"batch_size": 0}}, "training.batch_size must be a positive whole number"),
    ("a method that does not fit the task", None, {**IMAGES, "method": {"name": "prompt_tuning"}},
     "The method prompt_tuning cannot train the task image_cls"),
]


@pytest.mark.parametrize(("name", "make", "changes", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_reaches_the_page_as_a_message(name, make, changes, expected, model_dirs, tmp_path):
    changes = dict(changes)
    task, model = changes.pop("task", "causal_lm"), changes.pop("model", "llama")
    if task == "image_cls" and "method" not in changes:
        changes["method"] = {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    text = config_yaml(model_dirs, task=task, model=model, method=changes.pop("method", None), **changes)
    upload = {"path": str(make(tmp_path))} if make else None
    with pytest.raises(gr.Error) as caught:
        api.check_config(text, "", upload)
    assert expected in str(caught.value), str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_a_2_gb_upload_is_refused_before_it_is_read(model_dirs, tmp_path, monkeypatch):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: nothing on disk
    monkeypatch.setattr(builtins, "open", lambda *a, **k: pytest.fail(f"opened {a[0]}"))
    with pytest.raises(gr.Error) as caught:
        api.start_run(config_yaml(model_dirs), "", {"path": str(huge)})
    monkeypatch.undo()
    assert "huge.jsonl is 2.0 GiB, above this Studio's upload limit of 1.0 GiB" in str(caught.value)
    assert not (tmp_path / "runs" / "uploads").exists()  # nothing was copied
