"""Two processes (DDP over gloo on the CPU) take the step one process takes.

``accelerate launch`` starts GPU processes through torchrun; on the CPU its
MULTI_CPU mode wants MPI, so the test starts the two processes with torchrun
itself, which is what accelerate's multi-GPU launch runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import SAMPLES, run_config

from peft_core.training.events import EvalEvent, StepEvent, read_events
from peft_core.training.run import train

ROOT = Path(__file__).resolve().parent.parent



def test_two_processes_give_the_step_of_one_big_batch(model_dirs, tmp_path):
    data = tmp_path / "four.jsonl"
    data.write_text("".join((SAMPLES / "prompt_completion.jsonl").read_text().splitlines(keepends=True)[:4]))  # one step: every example
    common = {"max_steps": 2, "data": {"eval_fraction": 0.0, "eval": str(SAMPLES / "prompt_completion.jsonl")},
              "method": {"name": "lora", "r": 4, "init_lora_weights": "gaussian"}}
    single = run_config("causal_lm", model_dirs["llama"], data, tmp_path / "single", batch_size=4, **common)
    assert train(single).status == "ok"

    config = run_config("causal_lm", model_dirs["llama"], data, tmp_path / "ddp", batch_size=2, **common)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "peft_core", "train", str(config_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training ok") == 1, result.stdout  # one process reports

    def steps(run_dir: Path) -> list[float]:
        return [e.loss for e in read_events(run_dir / "events.jsonl")[0] if isinstance(e, StepEvent)]

    assert steps(tmp_path / "ddp") == pytest.approx(steps(tmp_path / "single"), rel=1e-5)
    def evals(run_dir: Path) -> list[dict]:
        return [e.metrics for e in read_events(run_dir / "events.jsonl")[0] if isinstance(e, EvalEvent)]

    # each process evaluates part of the eval set; the totals are summed, not the means averaged
    assert len(evals(tmp_path / "ddp")) == 2
    for ours, theirs in zip(evals(tmp_path / "ddp"), evals(tmp_path / "single"), strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5)
    ours, theirs = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("ddp", "single"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
