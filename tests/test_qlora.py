"""LoRA on bitsandbytes 4-bit and 8-bit base layers (QLoRA), on the CPU."""

from __future__ import annotations

import peft
import pytest
import torch
from models import MODELS, logits
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from peft_core import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft_core.methods.lora import LoraLinear

QUANT = {
    "4bit": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    ),
    "8bit": BitsAndBytesConfig(load_in_8bit=True),
}


def llama64():
    # hidden size 64: bitsandbytes' CPU inference path needs rows of at least one 64-value block
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    llama64().save_pretrained(path)
    return path


def quantized(path, kind: str):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=QUANT[kind], device_map="cpu")


def train_steps(model, steps: int = 12) -> list[float]:
    inputs = MODELS["llama"].inputs()["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_lora_trains_on_a_quantized_base(llama_dir, kind):
    base = prepare_model_for_kbit_training(quantized(llama_dir, kind))
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=8, lora_alpha=16))
    wrapped = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(type(m.base_layer).__name__ in ("Linear4bit", "Linear8bitLt") for m in wrapped)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    losses = train_steps(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


def test_trainable_count_counts_4bit_weights_unpacked(llama_dir):
    dense = llama64()
    dense_total = sum(p.numel() for p in dense.parameters())
    model = get_peft_model(quantized(llama_dir, "4bit"), LoraConfig(task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    assert total - trainable == dense_total


def test_4bit_adapter_interops_with_peft(llama_dir, tmp_path):
    inputs = MODELS["llama"].inputs()
    ours = get_peft_model(quantized(llama_dir, "4bit"), LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False)).eval()
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(quantized(llama_dir, "4bit"), str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, rtol=1e-4, atol=1e-4)
    # and the adapter is the same one on the full-precision base
    dense = PeftModel.from_pretrained(llama64(), tmp_path)
    assert (logits(dense, inputs) - expected).abs().max() < 0.2  # only 4-bit rounding differs


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_merge_into_quantized_weights(llama_dir, kind):
    inputs = MODELS["llama"].inputs()
    torch.manual_seed(0)
    config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, r=4, lora_alpha=2)
    model = get_peft_model(quantized(llama_dir, kind), config).eval()
    with model.disable_adapter():
        base = logits(model, inputs)
    unmerged = logits(model, inputs)
    merged = model.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj).__name__ in ("Linear4bit", "Linear8bitLt")
    after = logits(merged, inputs)
    # re-quantizing rounds every weight again; the adapter's effect must dominate that error
    rounding = (after - unmerged).abs().mean() / (unmerged - base).abs().mean()
    assert rounding < {"4bit": 0.3, "8bit": 0.05}[kind], rounding


def test_training_after_an_evaluation_gets_the_same_gradients(llama_dir):
    """bitsandbytes' CPU inference layout (set by an eval call) has no backward; the trainer undoes it."""
    from peft_core.weights import training_layout

    base = prepare_model_for_kbit_training(quantized(llama_dir, "4bit"))
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=8))
    inputs = MODELS["llama"].inputs()["input_ids"]
    first = next(m for m in model.modules() if isinstance(m, LoraLinear))

    def gradient() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(input_ids=inputs, labels=inputs).loss.backward()
        return first.lora_B["default"].weight.grad.clone()

    before = gradient()
    scale = float(before.abs().max())
    model.eval()
    with torch.no_grad():
        model(input_ids=inputs)
    if getattr(first.base_layer.weight.quant_state, "packing_format_for_cpu", False):
        # this CPU has bitsandbytes' AVX512-BF16 layout: without the fix no gradient would pass the 4-bit layers
        assert float((gradient() - before).abs().max()) > 0.2 * scale
    training_layout(model)
    # the same up to bitsandbytes re-rounding its double-quantized block scales on the way back
    assert float((gradient() - before).abs().max()) < 0.02 * scale
