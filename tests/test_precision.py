"""Precision follows the hardware (a T4 gets fp16 although torch says it has bf16); adapters train in fp32."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import SAMPLES, run_config

from peft_core import LoraConfig, get_peft_model
from peft_core.training.events import StepEvent, read_events
from peft_core.training.precision import pick_precision, upcast_trainable
from peft_core.training.run import train


def test_cpu_trains_in_fp32_and_refuses_fp16():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"  # asked for: autocast on the CPU works
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        pick_precision("fp16", cpu)


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                                      ((9, 0), "bf16")])
def test_gpus_get_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # true on a T4, by emulation
    assert pick_precision("auto", torch.device("cuda")) == expected
    assert pick_precision("fp32", torch.device("cuda")) == "fp32"


def test_adapter_weights_are_upcast_while_the_base_stays_half(model_dirs):
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model_dirs["bert"], dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, init_lora_weights="gaussian", bias="lora_only"))
    # LoRA factors and the head's trainable copy start in fp32; the wrapped layers' own biases (bias="lora_only") do not
    assert upcast_trainable(model) > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=torch.tensor([[101, 2000, 2001, 102]]), labels=torch.tensor([1]))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
    assert upcast_trainable(model) == 0  # nothing left to cast


def test_bf16_autocast_run_on_the_cpu(model_dirs, tmp_path):
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run",
                        precision="bf16", max_steps=4)
    done = train(config)
    assert done.status == "ok", done.error
    losses = [e.loss for e in read_events(tmp_path / "run" / "events.jsonl")[0] if isinstance(e, StepEvent)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "run" / "adapter_model.safetensors").values())


def _cuda_run(model_dirs, tmp_path, **overrides):
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=20,
                        learning_rate=5e-3)
    config = config.with_overrides([f"{k}={v}" for k, v in overrides.items()])
    done = train(config)
    assert done.status == "ok", done.error
    losses = [e.loss for e in read_events(tmp_path / "run" / "events.jsonl")[0] if isinstance(e, StepEvent)]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])
    return load_file(tmp_path / "run" / "adapter_model.safetensors")


@pytest.mark.gpu
def test_fp16_with_gradient_scaling_on_cuda(model_dirs, tmp_path):
    saved = _cuda_run(model_dirs, tmp_path, **{"training.precision": "fp16"})
    assert all(t.dtype == torch.float32 for t in saved.values())  # fp32 adapter weights under fp16


@pytest.mark.gpu
def test_qlora_4bit_on_cuda(model_dirs, tmp_path):
    _cuda_run(model_dirs, tmp_path, **{"model.quantization": "4bit", "model.gradient_checkpointing": "true",
                                       "training.optimizer": "adamw_8bit"})
