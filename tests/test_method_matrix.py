"""Every method row on every tiny model: the properties an adapter must have."""

from __future__ import annotations

import pytest
import torch
from method_rows import METHODS, adapted, cases
from models import MODELS, logits, twin

from peft_core import PeftModel, get_peft_model
from peft_core.layers import AdapterLayer
from peft_core.modules_to_save import ModulesToSaveWrapper

CASES = cases(MODELS)
IDS = [f"{m}-{k}" for m, k in CASES]
IDENTITY = cases(MODELS, where=lambda row, _: row.identity_at_init)
MERGEABLE = cases(MODELS, where=lambda row, _: row.mergeable)
NOT_MERGEABLE = cases(MODELS, where=lambda row, _: not row.mergeable)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Virtual tokens may add output positions; otherwise compare values."""
    return a.shape != b.shape or not torch.allclose(a, b, atol=1e-4)


def ids(pairs):
    return [f"{m}-{k}" for m, k in pairs]


def build(model_name: str, method: str, init, seed: int = 0):
    tiny = MODELS[model_name]
    base = tiny.fresh(seed)
    config = METHODS[method].make(model_name, tiny.task_type, tiny.modules_to_save, init)
    return base, config, tiny.inputs()


@pytest.mark.parametrize(("model_name", "method"), IDENTITY, ids=ids(IDENTITY))
def test_output_unchanged_right_after_injection(model_name, method):
    base, config, inputs = build(model_name, method, init=True)
    before = logits(base, inputs)
    model = get_peft_model(base, config).eval()
    torch.testing.assert_close(logits(model, adapted(method, inputs)), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_only_adapter_parameters_train(model_name, method):
    base, config, _ = build(model_name, method, init=True)
    base_names = {f"base_model.model.{name}" for name, _ in base.named_parameters()}
    model = get_peft_model(base, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "the adapter has no trainable parameter"
    # the adapter's own tensors are exactly what trains (and what is saved)
    saved = {id(t) for t in model.base_model.adapter_tensors("default").values() if isinstance(t, torch.nn.Parameter)}
    assert {id(p) for p in model.parameters() if p.requires_grad} == saved
    # no weight of the base model trains, but biases when bias="all" asks for it
    base_trained = {n.replace(".base_layer.", ".") for n in trainable} & base_names
    if getattr(config, "bias", "none") == "all":
        has_biases = any(n.endswith("bias") for n in base_names)
        assert bool(base_trained) == has_biases and all(n.endswith("bias") for n in base_trained)
    else:
        assert not base_trained, base_trained


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_save_load_round_trip_is_exact(model_name, method, tmp_path):
    base, config, inputs = build(model_name, method, init=False)
    model = get_peft_model(base, config).eval()
    expected = logits(model, adapted(method, inputs))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = MODELS[model_name].fresh()
    if getattr(config, "bias", "none") == "all":  # the trained biases live in the file; start from other ones
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                if name.endswith("bias"):
                    p.add_(1.0)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(logits(loaded, adapted(method, inputs)), expected)
    assert not any(p.requires_grad for p in loaded.parameters()), "loaded for inference: nothing trains"


@pytest.mark.parametrize(("model_name", "method"), MERGEABLE, ids=ids(MERGEABLE))
def test_merged_equals_unmerged(model_name, method):
    base, config, inputs = build(model_name, method, init=False)
    original = logits(twin(base), inputs)
    model = get_peft_model(base, config).eval()
    with_adapter = logits(model, adapted(method, inputs))
    assert not torch.allclose(with_adapter, original, atol=1e-4), "a random adapter should change the output"
    model.merge_adapter()
    torch.testing.assert_close(logits(model, adapted(method, inputs)), with_adapter, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, adapted(method, inputs)), with_adapter, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, (AdapterLayer, ModulesToSaveWrapper)) for m in merged.modules())
    assert type(merged) is type(base)
    torch.testing.assert_close(logits(merged, inputs), with_adapter, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model_name", "method"), NOT_MERGEABLE, ids=ids(NOT_MERGEABLE))
def test_merging_a_method_that_cannot_merge_says_so(model_name, method):
    base, config, _ = build(model_name, method, init=False)
    model = get_peft_model(base, config)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter()


@pytest.mark.parametrize(("model_name", "method"), CASES, ids=IDS)
def test_disable_and_unload_give_the_base_model_back(model_name, method):
    base, config, inputs = build(model_name, method, init=False)
    original = logits(twin(base), inputs)
    model = get_peft_model(base, config).eval()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, adapted(method, inputs)), original, rtol=0, atol=0)
    assert differs(logits(model, adapted(method, inputs)), original)
    if METHODS[method].mergeable:
        model.merge_adapter()
        with model.disable_adapter():  # merged weights are taken out again
            torch.testing.assert_close(logits(model, adapted(method, inputs)), original, rtol=1e-5, atol=1e-5)
    unloaded = model.unload()
    assert type(unloaded) is type(base)
    torch.testing.assert_close(logits(unloaded, inputs), original, rtol=1e-5, atol=1e-5)
