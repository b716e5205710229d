"""Several named adapters on one model: add, switch, disable, delete, save and load each."""

from __future__ import annotations

import peft
import pytest
import torch
from models import MODELS, logits, twin

from peft_core import LoraConfig, PeftModel, get_peft_model


def random_lora(seed: int, **kwargs) -> LoraConfig:
    torch.manual_seed(seed)
    return LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kwargs)


@pytest.fixture
def two_adapters():
    tiny = MODELS["llama"]
    base = tiny.fresh()
    reference = twin(base)
    inputs = tiny.inputs()
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False)).eval()
    out_a = logits(model, inputs)
    torch.manual_seed(2)
    model.add_adapter("b", LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, r=4, target_modules=["k_proj"]))
    return model, reference, inputs, out_a


def test_added_adapter_waits_until_set(two_adapters):
    model, reference, inputs, out_a = two_adapters
    assert model.active_adapter == "default"
    assert torch.equal(logits(model, inputs), out_a)
    model.set_adapter("b")
    assert model.active_adapters == ["b"]
    out_b = logits(model, inputs)
    assert not torch.allclose(out_b, out_a, atol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n for n in trainable), "only the active adapter trains"
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), rtol=0, atol=0)


def test_two_active_adapters_add_up(two_adapters):
    model, reference, inputs, out_a = two_adapters
    model.set_adapter("b")
    out_b = logits(model, inputs)
    model.set_adapter(["default", "b"])
    both = logits(model, inputs)
    assert not torch.allclose(both, out_a, atol=1e-4) and not torch.allclose(both, out_b, atol=1e-4)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), both, rtol=1e-5, atol=1e-5)


def test_disable_and_enable_adapters(two_adapters):
    model, reference, inputs, out_a = two_adapters
    model.disable_adapters()
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), rtol=0, atol=0)
    model.enable_adapters()
    assert torch.equal(logits(model, inputs), out_a)


def test_delete_adapter(two_adapters):
    model, _, inputs, out_a = two_adapters
    model.set_adapter("b")
    model.delete_adapter("b")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert not any(".b." in n for n, _ in model.named_parameters())
    assert torch.equal(logits(model, inputs), out_a)
    with pytest.raises(ValueError, match="only adapter"):
        model.delete_adapter("default")


def test_each_adapter_saves_and_loads_by_name(two_adapters, tmp_path):
    model, reference, inputs, out_a = two_adapters
    model.set_adapter("b")
    out_b = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "b" / "adapter_model.safetensors").is_file()
    state = model.get_adapter_state_dict("b")
    assert state and all(k.startswith("base_model.model.") and ".b." not in k for k in state)
    assert all("k_proj" in k for k in state)

    loaded = PeftModel.from_pretrained(twin(reference), tmp_path)
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    assert torch.equal(logits(loaded, inputs), out_a)
    loaded.set_adapter("b")
    assert torch.equal(logits(loaded, inputs), out_b)

    theirs = peft.PeftModel.from_pretrained(twin(reference), str(tmp_path))
    theirs.load_adapter(str(tmp_path / "b"), adapter_name="b")
    theirs.set_adapter("b")
    torch.testing.assert_close(logits(theirs.eval(), inputs), out_b, rtol=1e-5, atol=1e-5)


def test_each_adapter_has_its_own_classifier_head():
    tiny = MODELS["bert"]
    inputs = tiny.inputs()
    model = get_peft_model(tiny.fresh(), LoraConfig(task_type="SEQ_CLS")).eval()
    model.add_adapter("other", LoraConfig(task_type="SEQ_CLS"))
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["other"].bias.add_(1.0)
    first = logits(model, inputs)
    model.set_adapter("other")
    torch.testing.assert_close(logits(model, inputs), first + 1.0)
    assert model.peft_config["other"].modules_to_save == ["classifier"]


def test_failed_load_leaves_the_model_as_it_was(two_adapters, tmp_path):
    model, _, inputs, out_a = two_adapters
    other = get_peft_model(MODELS["gpt2"].fresh(), LoraConfig(target_modules=["c_attn"]))
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError):
        model.load_adapter(tmp_path, adapter_name="wrong")
    assert "wrong" not in model.peft_config
    assert torch.equal(logits(model, inputs), out_a)
