"""Bad input gets an error that names what is wrong and what to do."""

from __future__ import annotations

import json
import math

import peft
import pytest
import torch
from models import MODELS, logits
from transformers import LlamaConfig, LlamaForCausalLM

from peft_core import LoraConfig, PeftConfig, PeftModel, PickleRefusedError, get_peft_model
from peft_core.serialization import get_peft_model_state_dict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "r must be a positive whole number"),
        ({"r": -4}, "r must be a positive whole number"),
        ({"r": 2.5}, "r must be a positive whole number"),
        ({"lora_alpha": 0}, "lora_alpha must be a positive number"),
        ({"lora_alpha": math.nan}, "lora_alpha must be a positive number"),
        ({"lora_dropout": 1.0}, "lora_dropout must be at least 0 and below 1"),
        ({"bias": "some"}, "bias must be one of none, all, lora_only"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights must be True, False or 'gaussian'"),
        ({"target_modules": [""]}, "target_modules must be a list of module names"),
        ({"layers_to_transform": [-1]}, "layers_to_transform must be layer numbers"),
        ({"layers_pattern": "layers"}, "layers_pattern only has a meaning together with layers_to_transform"),
        ({"use_dora": True, "lora_bias": True}, "use_dora and lora_bias cannot be combined"),
        ({"task_type": "TRANSLATE"}, "task_type 'TRANSLATE' is not a known task type"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_unknown_target_modules_list_what_exists():
    with pytest.raises(ValueError) as err:
        get_peft_model(MODELS["gpt2"].fresh(), LoraConfig(target_modules=["q"]))
    text = str(err.value)
    assert "target_modules ['q'] matched nothing in GPT2LMHeadModel" in text
    assert "c_attn" in text and "c_proj" in text and "c_fc" in text


def test_a_module_lora_cannot_wrap_is_named():
    with pytest.raises(ValueError, match="'model.layers.0.input_layernorm' is a LlamaRMSNorm"):
        get_peft_model(MODELS["llama"].fresh(), LoraConfig(target_modules=["input_layernorm"]))


def test_unknown_modules_to_save():
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] matched no module"):
        get_peft_model(MODELS["bert"].fresh(), LoraConfig(modules_to_save=["head"]))


def test_missing_adapter_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path / "nope")


def test_directory_without_adapter(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"has no adapter_config.json \(it holds: notes.txt\)"):
        PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)


def test_broken_config_json(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)


def test_adapter_of_a_method_peft_core_lacks(tmp_path):
    theirs = peft.get_peft_model(MODELS["llama"].fresh(), peft.VeraConfig(target_modules=["q_proj", "v_proj"], r=4))
    theirs.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="unknown PEFT method 'VERA'; peft_core knows: "):
        PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)
    with pytest.raises(ValueError, match="this adapter config is for VERA, not LORA"):
        LoraConfig.from_pretrained(tmp_path)


def test_adapter_for_another_base_model(tmp_path):
    get_peft_model(MODELS["llama"].fresh(), LoraConfig()).save_pretrained(tmp_path)
    wider = LlamaForCausalLM(LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=100,
    ))
    with pytest.raises(ValueError, match=r"has shape \(8, 32\) in the adapter file but \(8, 64\).*different base model"):
        PeftModel.from_pretrained(wider, tmp_path)


def test_adapter_for_other_modules(tmp_path):
    get_peft_model(MODELS["llama"].fresh(), LoraConfig(target_modules=["q_proj", "k_proj"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tensors for modules this model does not have or the adapter config does not target"):
        PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)


def test_pickled_adapter_needs_opt_in(tmp_path):
    tiny = MODELS["llama"]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), LoraConfig(init_lora_weights=False)).eval()
    expected = logits(model, tiny.inputs())
    model.peft_config["default"].save_pretrained(tmp_path)
    torch.save(get_peft_model_state_dict(model), tmp_path / "adapter_model.bin")
    with pytest.raises(PickleRefusedError, match="pickle file, which can run arbitrary code.*allow_pickle=True"):
        PeftModel.from_pretrained(tiny.fresh(), tmp_path)
    loaded = PeftModel.from_pretrained(tiny.fresh(), tmp_path, allow_pickle=True)
    assert torch.equal(logits(loaded, tiny.inputs()), expected)


def test_only_safetensors_are_written(tmp_path):
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig())
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path, safe_serialization=False)
    assert not any(tmp_path.iterdir())


def test_model_mistakes():
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig())
    with pytest.raises(ValueError, match="already has adapters; use add_adapter"):
        get_peft_model(model, LoraConfig())
    with pytest.raises(ValueError, match="an adapter named 'default' already exists"):
        model.add_adapter("default", LoraConfig())
    with pytest.raises(ValueError, match=r"no adapter named \['nope'\]; this model has: \['default'\]"):
        model.set_adapter("nope")


def test_lora_bias_cannot_merge_into_a_layer_without_bias():
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig(lora_bias=True))
    with pytest.raises(ValueError, match="lora_bias cannot be merged into a layer that has no bias"):
        model.merge_and_unload()


def test_safe_merge_refuses_nan():
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig(init_lora_weights=False))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    before = layer.base_layer.weight.clone()
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before)


def test_unknown_config_keys_are_kept_and_ignored(tmp_path, caplog):
    config = LoraConfig(r=4).to_dict()
    config.update({"brand_new_option": 3, "use_qalora": False, "peft_version": "9.9"})
    loaded = PeftConfig.from_dict(config)
    assert isinstance(loaded, LoraConfig) and loaded.r == 4
    assert "brand_new_option" in caplog.text and "use_qalora" not in caplog.text
    loaded.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["brand_new_option"] == 3


def test_merging_into_tied_embeddings_warns(caplog):
    model = get_peft_model(MODELS["gpt2"].fresh(), LoraConfig(target_modules=["wte"]))
    model.merge_adapter()
    assert "transformer.wte shares its weight with another module" in caplog.text
