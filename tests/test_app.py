"""The app: Blocks build, handlers are plain functions, the server starts and answers."""

from __future__ import annotations

import socket
import urllib.request

import gradio as gr
import pytest

import app
from pages.forms import choice_label, form_fields, to_settings
from peft_core import LoraConfig


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


def test_tabs_and_named_api_endpoints(tmp_path):
    from gradio_client import Client

    from pages import common
    from pages.i18n import english

    common.configure(tmp_path / "runs", single_user=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app()
    labels = [english(block.label) for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert labels == ["LLM", "Vision", "DreamBooth", "Test", "Publish"]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        api = Client(f"http://127.0.0.1:{port}/", verbose=False).view_api(return_format="dict", print_info=False)
        names = set(api["named_endpoints"])
        assert {"/start_run", "/run_status", "/stop_run", "/check_config", "/load_adapter", "/compare", "/publish",
                "/download_zip", "/merge"} <= names, names
    finally:
        demo.close()
