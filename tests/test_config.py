"""Configs: PEFT-dialect JSON both ways, help text for forms, the registry."""

from __future__ import annotations

import dataclasses

import peft

from peft_core import LoraConfig, PeftConfig, TaskType, get_method, list_methods


def test_json_round_trip(tmp_path):
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM")
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LoraConfig)
    assert dataclasses.replace(loaded, inference_mode=False) == config
    assert loaded.inference_mode is True  # written as the PEFT library writes it


def test_peft_reads_our_config(tmp_path):
    LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], use_rslora=True, task_type="CAUSAL_LM").save_pretrained(tmp_path)
    theirs = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert isinstance(theirs, peft.LoraConfig)
    assert (theirs.r, theirs.lora_alpha, theirs.use_rslora, theirs.task_type) == (4, 8, True, "CAUSAL_LM")


def test_image_task_is_saved_as_peft_saves_it():
    config = LoraConfig(task_type=TaskType.IMAGE_CLS)
    assert config.to_dict()["task_type"] is None


def test_every_ui_field_has_help():
    for spec in list_methods():
        fields = spec.config_cls.fields_for_ui()
        assert fields, spec.name
        for field in fields:
            assert len(field.metadata["help"]) > 10, (spec.name, field.name)


def test_registry_lookup():
    assert get_method("lora") is get_method("LORA")
    assert get_method("lora").config_cls is LoraConfig
    assert TaskType.CAUSAL_LM in get_method("lora").tasks
    assert "lora" in [s.name for s in list_methods("SEQ_CLS")]


def test_registry_offers_only_methods_that_fit_the_model():
    from models import MODELS

    from peft_core.registry import methods_for

    bert = {s.name for s in methods_for("SEQ_CLS", MODELS["bert"].fresh())}
    assert {"lora", "prompt_tuning", "prefix_tuning"} <= bert
    vit = {s.name for s in methods_for("IMAGE_CLS", MODELS["vit"].fresh())}
    assert "lora" in vit and not vit & {"prompt_tuning", "p_tuning", "prefix_tuning", "multitask_prompt_tuning"}
    # a classifier whose backbone takes no key/value cache cannot get a prefix
    assert "prefix_tuning" not in {s.name for s in methods_for("SEQ_CLS", MODELS["vit"].fresh())}
