"""The pages' handlers as plain functions: forms -> run configs, data sources, checks, the monitor's view."""

from __future__ import annotations

import time

import pytest
from PIL import Image
from tiny_runs import SAMPLES

from pages import api, common, dreambooth, monitor, training
from pages.forms import choice_label, form_fields
from peft_core import LoraConfig, get_peft_model
from peft_core.run_config import RunConfig


@pytest.fixture(autouse=True)
def _runs(tmp_path):
    common.configure(tmp_path / "runs", single_user=True)
    yield
    common.configure(tmp_path / "runs", single_user=True)


def widget_values(fields, **overrides):
    values = []
    for field in fields:
        value = overrides.get(field.name, field.default)
        if field.kind == "choice":
            value = choice_label(value)
        elif field.kind in ("names", "ints") and not isinstance(value, str):
            value = "" if value is None else ", ".join(map(str, value))
        values.append(value)
    return values


def form_config(model_dir, data, **hyper) -> RunConfig:
    return training.config_from_form(
        "causal_lm", model_dir, "lora", widget_values(form_fields(LoraConfig), r=4), str(data), "auto",
        widget_values(training.HYPER_FIELDS, **{"max_steps": 4, "batch_size": 2, "eval_steps": None, **hyper}),
    )


def test_the_form_makes_the_config_the_cli_reads(model_dirs, tmp_path):
    config = form_config(model_dirs["llama"], SAMPLES / "alpaca.jsonl", learning_rate=1e-3, packing=True)
    assert config.method == {"name": "lora", **{k: v for k, v in config.method.items() if k != "name"}}
    assert config.method["r"] == 4 and config.training.learning_rate == 1e-3 and config.data.packing
    assert config.training.eval_steps is None  # an empty optional number stays empty
    # what the UI made survives YAML, so `python -m peft_core train config.yaml` reproduces it
    path = tmp_path / "config.yaml"
    config.save_yaml(path)
    assert RunConfig.from_yaml(path).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="training.batch_size must be a positive whole number"):
        form_config(model_dirs["llama"], SAMPLES / "alpaca.jsonl", batch_size=0)


def test_check_shows_data_trainable_params_and_memory(model_dirs):
    from transformers import AutoModelForCausalLM

    text = training.check_run(form_config(model_dirs["llama"], SAMPLES / "alpaca.jsonl"))
    real = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dirs["llama"]), LoraConfig(r=4))
    trainable, total = real.get_nb_trainable_parameters()
    assert f"trainable params: **{trainable:,d}** || all params: {total:,d}" in text
    assert "alpaca.jsonl" in text and "train" in text and "### Memory" in text and "fits" in text


def test_uploads_are_kept_without_overwriting(tmp_path):
    first = tmp_path / "data.jsonl"
    first.write_text('{"text": "one"}\n')
    kept = training.data_source(str(first), "", "local")
    first.write_text('{"text": "two"}\n')  # the same name, new content: a new copy, the old one untouched
    second = training.data_source(str(first), "", "local")
    assert kept != second and open(kept).read() == '{"text": "one"}\n' and open(second).read() == '{"text": "two"}\n'
    assert training.data_source(None, "someone/dataset", "local") == "someone/dataset"
    with pytest.raises(ValueError, match="no data"):
        training.data_source(None, " ", "local")


def test_a_shared_studio_refuses_server_paths(tmp_path):
    common.configure(tmp_path / "runs", single_user=False)
    with pytest.raises(ValueError, match="give a Hub dataset id"):
        training.data_source(None, "/etc/passwd", "someone")
    with pytest.raises(ValueError, match="pick a preset or give a Hub model id"):
        training.check_model_choice(str(tmp_path))
    assert training.check_model_choice("smollm2-135m-instruct") == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="reload the page"):
        common.owner_of(None)
    assert common.owner_of("abc") == "abc"
    from pages import test_tab

    with pytest.raises(ValueError, match="not one of yours"):  # a run folder sent by a crafted request
        test_tab.load("someone", str(tmp_path), "", "", "")
    with pytest.raises(ValueError, match="pick a preset or give a Hub model id"):
        test_tab.load("someone", None, "user/adapter", str(tmp_path), "causal_lm")
    with pytest.raises(Exception, match="give a Hub dataset id"):
        api.check_config("task: causal_lm\ndata: {train: someone/data, eval: /etc/passwd}\n", "someone")
    common.configure(tmp_path / "runs", single_user=True)
    assert common.owner_of(None) == "local"


def test_dreambooth_uploads_and_config(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (80, 80), (i * 60, 100, 50)).save(path)
        paths.append(str(path))
    folder = dreambooth.save_uploads(paths, "local")
    assert sorted(p.name for p in __import__("pathlib").Path(folder).iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert dreambooth.save_uploads(paths, "local") == folder  # the same upload again: the same folder
    with pytest.raises(ValueError, match="no images"):
        dreambooth.save_uploads([], "local")
    lora_fields = form_fields(LoraConfig)
    config = dreambooth.dreambooth_config(
        "tiny-sd-random", "lora", widget_values(lora_fields, r=4), folder,
        widget_values(dreambooth.DREAMBOOTH_FIELDS, resolution=32, num_class_images=2), 10, 1e-4, False, "adamw")
    assert config.task == "dreambooth" and config.dreambooth.resolution == 32 and config.method["r"] == 4
    assert "instance images" in training.check_run(config)


def test_a_run_started_from_the_api_is_watched_and_stopped(model_dirs, tmp_path):
    config = RunConfig.from_dict({
        "task": "causal_lm", "model": {"name_or_path": model_dirs["llama"]}, "method": {"name": "lora", "r": 4},
        "data": {"train": str(SAMPLES / "alpaca.jsonl"), "max_length": 128},
        "training": {"output_dir": "ignored", "max_steps": 400, "batch_size": 1, "eval_steps": None,
                     "save_steps": None, "learning_rate": 1e-3},
    })
    job = api.start_run(config.to_yaml())
    deadline = time.time() + 120
    view = monitor.snapshot(job, "local")
    while len(view.loss) < 3 and time.time() < deadline:
        time.sleep(0.5)
        view = monitor.snapshot(job, "local")
    assert len(view.loss) >= 3 and "step" in view.progress and view.config_yaml.startswith("task: causal_lm")
    api.stop_run(job)
    while api.run_status(job)["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    view = monitor.snapshot(job, "local")
    assert api.run_status(job)["state"] == "stopped" and view.finished and "run stopped" in view.log
    assert [label for label, _ in monitor.run_choices("local")][0].startswith(job)
    with pytest.raises(Exception, match="not valid YAML"):
        api.start_run("task: [")


def test_a_reloaded_page_finds_the_running_run_and_a_merged_model_downloads(model_dirs, tmp_path):
    import zipfile

    from pages import publish_tab

    config = RunConfig.from_dict({
        "task": "causal_lm", "model": {"name_or_path": model_dirs["llama"]}, "method": {"name": "lora", "r": 4},
        "data": {"train": str(SAMPLES / "alpaca.jsonl"), "max_length": 128},
        "training": {"output_dir": "ignored", "max_steps": 400, "batch_size": 1, "eval_steps": None,
                     "save_steps": None},
    })
    assert monitor.attachable("local", ["causal_lm"]) is None
    job = api.start_run(config.to_yaml())
    assert monitor.attachable("local", ["causal_lm"]) == job  # what a new page follows by itself
    assert monitor.attachable("local", ["image_cls"]) is None  # not on the Vision tab
    api.stop_run(job)
    deadline = time.time() + 120
    while api.run_status(job)["state"] in ("running", "queued") and time.time() < deadline:
        time.sleep(0.5)
    assert monitor.attachable("local", ["causal_lm"]) is None
    assert 'role="progressbar"' in monitor.bar(5, 10) and "width:50.0%" in monitor.bar(5, 10)

    merged = __import__("peft_core.publish", fromlist=["merge_run"]).merge_run(api.run_status(job)["run_dir"],
                                                                             tmp_path / "out")
    archive = publish_tab.zip_folder(merged)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert f"{merged.name}/config.json" in names and any(n.endswith(".safetensors") for n in names)
