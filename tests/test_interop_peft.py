"""Adapters cross between peft_core and the real PEFT library, both ways, same logits.

The PEFT library and transformers' ``load_adapter`` are oracles here; peft_core
never imports them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import peft
import pytest
import torch
from method_rows import METHODS, adapted, cases
from models import MODELS, logits, twin

from peft_core import PeftModel, get_peft_model

CASES = cases(MODELS, where=lambda row, model: row.interops_on(model))
IDS = [f"{m}-{k}" for m, k in CASES]


def our_model(model_name: str, method: str):
    tiny = MODELS[model_name]
    base = tiny.fresh()
    config = METHODS[method].make(model_name, tiny.task_type, tiny.modules_to_save, False)
    return base, config, tiny.inputs()


def peft_config_like(config) -> peft.PeftConfig:
    """The same settings as a PEFT library config (built from the user-facing dict)."""
    data = config.to_dict()
    data.pop("extra_keys", None)
    return peft.PeftConfig.from_peft_type(**data)


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_peft_core_adapter_loads_in_peft(model_name, method, tmp_path):
    base, config, inputs = our_model(model_name, method)
    reference_base = twin(base)
    ours = get_peft_model(base, config).eval()
    expected = logits(ours, adapted(method, inputs))
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(reference_base, str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs, adapted(method, inputs)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_peft_adapter_loads_in_peft_core(model_name, method, tmp_path):
    base, config, inputs = our_model(model_name, method)
    our_base = twin(base)
    if getattr(config, "target_modules", "") is None:  # PEFT knows no defaults for transformers 5's ViT; use ours
        resolved = get_peft_model(twin(base), config).peft_config["default"]
        filled = [name for name in ("target_modules", "feedforward_modules") if hasattr(config, name)]  # IA3's too
        config = replace(config, **{name: getattr(resolved, name) for name in filled})
    torch.manual_seed(5)
    theirs = peft.get_peft_model(base, peft_config_like(config)).eval()
    expected = logits(theirs, adapted(method, inputs))
    theirs.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(our_base, tmp_path)
    torch.testing.assert_close(logits(ours, adapted(method, inputs)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name", list(MODELS))
# Not DoRA: transformers 5.23's load_adapter drops the magnitude vectors of any
# DoRA adapter, the PEFT library's own included (its load report lists them as
# UNEXPECTED); peft.PeftModel.from_pretrained loads ours correctly (above).
@pytest.mark.parametrize("method", ["lora", "rslora", "lora_embed_conv", "lora_rank_pattern"])
def test_transformers_load_adapter_reads_peft_core_adapter(model_name, method, tmp_path):
    base, config, inputs = our_model(model_name, method)
    reference_base = twin(base)
    ours = get_peft_model(base, config).eval()
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    reference_base.load_adapter(str(tmp_path))
    torch.testing.assert_close(logits(reference_base.eval(), inputs), expected, rtol=1e-5, atol=1e-5)


def test_saved_config_uses_peft_keys(tmp_path):
    base, config, _ = our_model("bert", "lora")
    get_peft_model(base, config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == "LORA" and data["task_type"] == "SEQ_CLS"
    assert sorted(data["target_modules"]) == ["query", "value"]
    assert data["modules_to_save"] == ["classifier"]
    peft_keys = set(peft.LoraConfig().to_dict())
    assert set(data) <= peft_keys, f"keys PEFT does not know: {set(data) - peft_keys}"
