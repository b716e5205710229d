"""The CLI: every shipped example config validates and trains; bad configs get a message and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peft_core.cli import main
from peft_core.run_config import RunConfig
from peft_core.training.events import DoneEvent, StepEvent, read_events

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TASKS = {"causal_lm", "seq2seq", "seq_cls", "token_cls", "image_cls", "dreambooth"}


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name their data relative to it


def test_there_is_an_example_for_every_task():
    assert {RunConfig.from_yaml(path).task for path in EXAMPLES} >= TASKS


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_validates_and_trains(path, tmp_path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows" in out and "example 1" in out
    run_dir = tmp_path / "run"
    code = main(["train", str(path), "--set", f"training.output_dir={run_dir}", "--set", "training.max_steps=2",
                 "--set", "training.eval_steps=2"])
    assert code == 0, capsys.readouterr().err
    events = read_events(run_dir / "events.jsonl")[0]
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2]
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "ok"
    adapter = "unet/adapter_model.safetensors" if RunConfig.from_yaml(path).task == "dreambooth" else "adapter_model.safetensors"
    assert load_file(run_dir / adapter)
    # the saved config reproduces the run (the overrides included)
    saved = RunConfig.from_yaml(run_dir / "config.yaml")
    assert saved.training.max_steps == 2 and saved.method == RunConfig.from_yaml(path).method


def test_python_dash_m_trains_with_a_progress_bar(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "peft_core", "train", "examples/seq_cls.yaml",
         "--set", f"training.output_dir={run_dir}", "--set", "training.max_steps=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "3/3" in result.stderr and "loss=" in result.stderr  # tqdm
    assert f"adapter in {run_dir}" in result.stdout
    assert (run_dir / "adapter_model.safetensors").is_file() and (run_dir / "checkpoint-3").is_dir()


def test_estimate_prints_the_parts_and_the_total(capsys):
    code = main(["estimate", "examples/qlora.yaml"])
    out = capsys.readouterr().out
    assert code in (0, 2)
    for part in ("weights", "adapter", "gradients", "optimizer", "activations", "total"):
        assert part in out
    assert ("fits" in out) == (code == 0)


def test_a_run_needing_more_than_there_is_exits_2_with_advice(capsys, monkeypatch):
    monkeypatch.setattr("peft_core.training.memory.device_memory_gb", lambda: ("a small GPU", 0.05))
    assert main(["estimate", "examples/causal_lm.yaml"]) == 2
    out = capsys.readouterr().out
    assert "does not fit" in out and "a small GPU" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: [unclosed", "is not valid YAML"),
        ("task: summarise\n", "task must be one of"),
        ("task: causal_lm\ntraining: {batch_size: 0}\n", "training.batch_size must be a positive whole number"),
        ("task: causal_lm\nmethod: {name: lora, rank: 8}\n", "method lora has no setting 'rank'"),
        ("task: causal_lm\noptimiser: adamw\n", "unknown section(s) optimiser"),
        ("task: causal_lm\ndata: {train: nowhere.jsonl}\n", "nowhere.jsonl does not exist"),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_override_is_named(capsys):
    assert main(["validate", "examples/seq_cls.yaml", "--set", "max_steps"]) == 2
    assert "must look like section.setting=value" in capsys.readouterr().err


def test_training_into_a_finished_run_is_refused(tmp_path, capsys):
    args = ["train", "examples/image_cls.yaml", "--set", f"training.output_dir={tmp_path}", "--set", "training.max_steps=1"]
    assert main(args) == 0
    before = (tmp_path / "adapter_model.safetensors").read_bytes()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
