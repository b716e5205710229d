"""The app: Blocks build, handlers are plain functions, the server starts and answers."""

from __future__ import annotations

import socket
import urllib.request

import gradio as gr
import pytest
from models import MODELS

import app
from pages.forms import choice_label, form_fields, to_settings
from pages.planner import run_plan
from peft_core import LoraConfig, get_peft_model


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    MODELS["llama"].fresh().save_pretrained(path)
    return str(path)


def form_values(**overrides):
    values = []
    for field in form_fields(LoraConfig):
        value = overrides.get(field.name, field.default)
        if field.kind == "choice":
            value = choice_label(value)
        elif field.kind in ("names", "ints") and not isinstance(value, str):
            value = "" if value is None else ", ".join(map(str, value))
        values.append(value)
    return values


def test_blocks_build_without_launching():
    assert isinstance(app.build_app(), gr.Blocks)


def test_form_is_built_from_the_config():
    names = [f.name for f in form_fields(LoraConfig)]
    assert names[:3] == ["r", "lora_alpha", "lora_dropout"]
    assert "extra_keys" not in names and "rank_pattern" not in names
    kinds = {f.name: f.kind for f in form_fields(LoraConfig)}
    assert kinds["r"] == "int" and kinds["use_dora"] == "bool" and kinds["bias"] == "choice"


def test_form_values_become_typed_settings():
    fields = form_fields(LoraConfig)
    settings = to_settings(fields, form_values(r=4.0, target_modules="q_proj, v_proj", layers_to_transform="0, 1",
                                               init_lora_weights="gaussian"))
    assert settings["r"] == 4 and isinstance(settings["r"], int)
    assert settings["target_modules"] == ["q_proj", "v_proj"]
    assert settings["layers_to_transform"] == [0, 1]
    assert settings["init_lora_weights"] == "gaussian"
    assert to_settings(fields, form_values(target_modules=r".*\.(q|v)_proj"))["target_modules"] == r".*\.(q|v)_proj"
    assert to_settings(fields, form_values(target_modules="all-linear"))["target_modules"] == "all-linear"
    with pytest.raises(ValueError, match="layers_to_transform: enter whole numbers"):
        to_settings(fields, form_values(layers_to_transform="first"))


def test_plan_handler_matches_a_real_model(tiny_llama_dir):
    summary, config_json = run_plan(tiny_llama_dir, "CAUSAL_LM", "lora", *form_values(r=4, target_modules="all-linear"))
    real = get_peft_model(MODELS["llama"].fresh(), LoraConfig(r=4, target_modules="all-linear"))
    trainable, total = real.get_nb_trainable_parameters()
    assert f"trainable params: **{trainable:,d}** || all params: {total:,d}" in summary
    assert '"peft_type": "LORA"' in config_json and '"r": 4' in config_json


def test_plan_handler_shows_errors_in_the_page(tiny_llama_dir):
    with pytest.raises(gr.Error, match="r must be a positive whole number"):
        run_plan(tiny_llama_dir, "CAUSAL_LM", "lora", *form_values(r=0))
    with pytest.raises(gr.Error, match=r"target_modules \['query'\] matched nothing"):
        run_plan(tiny_llama_dir, "CAUSAL_LM", "lora", *form_values(target_modules="query"))
    with pytest.raises(gr.Error, match="cannot read the model config"):
        run_plan("/nonexistent/model", "CAUSAL_LM", "lora", *form_values())


def test_server_starts_and_serves_the_page():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
            assert "PEFT Studio" in response.read().decode()
    finally:
        demo.close()
