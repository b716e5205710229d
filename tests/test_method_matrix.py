"""Every method row on every tiny model: the properties an adapter must have."""

from __future__ import annotations

import pytest
import torch
from methods import METHODS
from models import MODELS, logits, twin

from peft_core import PeftModel, get_peft_model
from peft_core.layers import AdapterLayer
from peft_core.modules_to_save import ModulesToSaveWrapper

CASES = [(m, k) for m in MODELS for k in METHODS]
IDS = [f"{m}-{k}" for m, k in CASES]


def build(model_name: str, method: str, init, seed: int = 0):
    tiny = MODELS[model_name]
    base = tiny.fresh(seed)
    config = METHODS[method].make(model_name, tiny.task_type, tiny.modules_to_save, init)
    return base, config, tiny.inputs()


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_output_unchanged_right_after_injection(model_name, method):
    base, config, inputs = build(model_name, method, init=True)
    before = logits(base, inputs)
    model = get_peft_model(base, config).eval()
    torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_only_adapter_parameters_train(model_name, method):
    base, config, _ = build(model_name, method, init=True)
    has_biases = any(name.endswith("bias") for name, _ in base.named_parameters())
    model = get_peft_model(base, config)
    adapter_params = set()
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            for name in module.adapter_names:
                adapter_params.update(id(p) for _, p in module.adapter_parameters(name))
        if isinstance(module, ModulesToSaveWrapper):
            adapter_params.update(id(p) for p in module.modules_to_save.parameters())
    extra = {id(p) for p in model.base_model.extra_trainable("default").values()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == adapter_params | extra
    assert trainable, "the adapter has no trainable parameter"
    if config.bias == "all" and has_biases:
        assert extra, "bias='all' must train the biases"


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_save_load_round_trip_is_exact(model_name, method, tmp_path):
    base, config, inputs = build(model_name, method, init=False)
    model = get_peft_model(base, config).eval()
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = MODELS[model_name].fresh()
    if config.bias == "all":  # the trained biases live in the file; start from other ones
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                if name.endswith("bias"):
                    p.add_(1.0)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(logits(loaded, inputs), expected)
    assert not any(p.requires_grad for p in loaded.parameters()), "loaded for inference: nothing trains"


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_merged_equals_unmerged(model_name, method):
    base, config, inputs = build(model_name, method, init=False)
    original = logits(twin(base), inputs)
    model = get_peft_model(base, config).eval()
    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, original, atol=1e-4), "a random adapter should change the output"
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, inputs), adapted, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, (AdapterLayer, ModulesToSaveWrapper)) for m in merged.modules())
    assert type(merged) is type(base)
    torch.testing.assert_close(logits(merged, inputs), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_disable_and_unload_give_the_base_model_back(model_name, method):
    base, config, inputs = build(model_name, method, init=False)
    original = logits(twin(base), inputs)
    model = get_peft_model(base, config).eval()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), original, rtol=0, atol=0)
    assert not torch.allclose(logits(model, inputs), original, atol=1e-4)
    model.merge_adapter()
    with model.disable_adapter():  # merged weights are taken out again
        torch.testing.assert_close(logits(model, inputs), original, rtol=1e-5, atol=1e-5)
    unloaded = model.unload()
    assert type(unloaded) is type(base)
    torch.testing.assert_close(logits(unloaded, inputs), original, rtol=1e-5, atol=1e-5)
