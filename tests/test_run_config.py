"""The run config: YAML both ways, overrides, and bad values refused before anything loads."""

from __future__ import annotations

import math

import pytest

from peft_core import LoraConfig
from peft_core.run_config import RunConfig

BASE = {
    "task": "causal_lm",
    "model": {"name_or_path": "smollm2-135m-instruct"},
    "method": {"name": "lora", "r": 8, "lora_alpha": 16},
    "data": {"train": "data.jsonl"},
    "training": {"output_dir": "runs/x", "max_steps": 10},
}


def test_yaml_round_trip(tmp_path):
    config = RunConfig.from_dict(BASE)
    config.save_yaml(tmp_path / "config.yaml")
    again = RunConfig.from_yaml(tmp_path / "config.yaml")
    assert again == config
    method = again.method_config()
    assert isinstance(method, LoraConfig) and method.r == 8 and method.task_type.value == "CAUSAL_LM"


def test_overrides_apply_and_revalidate():
    config = RunConfig.from_dict(BASE).with_overrides(["training.max_steps=3", "method.r=4", "data.packing=true"])
    assert config.training.max_steps == 3 and config.method["r"] == 4 and config.data.packing is True
    with pytest.raises(ValueError, match="training.batch_size must be a positive whole number; got 0"):
        config.with_overrides(["training.batch_size=0"])
    with pytest.raises(ValueError, match="must look like section.setting=value"):
        config.with_overrides(["max_steps"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "lora", "r": 0}}, "r must be a positive whole number"),
        ({"method": {"name": "lora", "rank": 8}}, "method lora has no setting 'rank'; its settings are: "),
        ({"method": {"name": "magic"}}, "unknown PEFT method 'magic'"),
        ({"training": {"output_dir": "x", "learning_rate": math.nan}}, "training.learning_rate must be a number"),
        ({"training": {"output_dir": "x", "batch_size": 0}}, "training.batch_size must be a positive whole number"),
        ({"training": {"output_dir": "x", "max_steps": None}}, "set training.max_steps or training.num_epochs"),
        ({"training": {"output_dir": "x", "precision": "fp8"}}, "training.precision must be one of auto, fp32, fp16, bf16"),
        ({"training": {"output_dir": "x", "steps": 3}}, "training has no setting 'steps'"),
        ({"model": {"name_or_path": ""}}, "model.name_or_path is empty"),
        ({"model": {"name_or_path": "x", "quantization": "2bit"}}, "model.quantization must be one of none, 4bit, 8bit"),
        ({"data": {"train": "x", "max_length": -1}}, "data.max_length must be a positive whole number"),
        ({"task": "summarize"}, "task must be one of causal_lm"),
        ({"extra": {}}, "unknown section"),
        ({"task": "image_cls", "method": {"name": "prefix_tuning"}},
         "The method prefix_tuning cannot train the task image_cls. Methods that can: adalora, ia3, loha, lokr, lora"),
        ({"task": "dreambooth", "method": {"name": "ia3"}}, "Methods that can: loha, lokr, lora"),
    ],
)
def test_bad_values_are_refused_with_their_name(change, message):
    data = {**BASE, **change}
    if message is None:
        RunConfig.from_dict(data)
        return
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(data)


def test_total_step_of_adalora_follows_max_steps():
    config = RunConfig.from_dict({**BASE, "method": {"name": "adalora", "target_r": 4, "init_r": 8}})
    assert config.method_config().total_step == 10
