"""Task wrappers: generation, classification heads, parameter counts, training."""

from __future__ import annotations

import pytest
import torch
from models import MODELS

from peft_core import (
    LoraConfig,
    PeftModelForCausalLM,
    PeftModelForImageClassification,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    get_peft_model,
)


@pytest.mark.parametrize(("name", "wrapper"), [("llama", PeftModelForCausalLM), ("gpt2", PeftModelForCausalLM),
                                                ("t5", PeftModelForSeq2SeqLM)])
def test_generate_with_an_adapter_equals_generate_merged(name, wrapper):
    tiny = MODELS[name]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), LoraConfig(task_type=tiny.task_type, init_lora_weights=False)).eval()
    assert isinstance(model, wrapper)
    prompt = tiny.inputs()["input_ids"]
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        adapted = model.generate(input_ids=prompt, **kwargs)
        with model.disable_adapter():
            plain = model.generate(input_ids=prompt, **kwargs)
        merged = model.merge_and_unload().generate(input_ids=prompt, **kwargs)
    assert torch.equal(adapted.sequences, merged.sequences)
    torch.testing.assert_close(torch.stack(adapted.scores), torch.stack(merged.scores), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted.scores[0], plain.scores[0], atol=1e-3)


@pytest.mark.parametrize(("name", "wrapper"), [("bert", PeftModelForSequenceClassification),
                                                ("vit", PeftModelForImageClassification)])
def test_classifiers_train_their_new_head(name, wrapper):
    tiny = MODELS[name]
    model = get_peft_model(tiny.fresh(), LoraConfig(task_type=tiny.task_type))  # no modules_to_save given
    assert isinstance(model, wrapper)
    assert model.peft_config["default"].modules_to_save == ["classifier"]
    head = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    assert head == [
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    ]


def test_print_trainable_parameters(capsys):
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig(r=8))
    model.print_trainable_parameters()
    # q_proj and v_proj in 2 layers: 4 adapted 32x32 layers, each A (8x32) + B (32x8)
    base_total = sum(p.numel() for p in MODELS["llama"].fresh().parameters())
    trainable = 4 * (8 * 32 + 32 * 8)
    share = 100 * trainable / (base_total + trainable)
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {trainable:,d} || all params: {base_total + trainable:,d} || trainable%: {share:.4f}"
    )


def test_counts_on_the_meta_device_match_real_weights():
    real = get_peft_model(MODELS["llama"].fresh(), LoraConfig(target_modules="all-linear", use_dora=True))
    with torch.device("meta"):
        meta_base = MODELS["llama"].build()
    meta = get_peft_model(meta_base, LoraConfig(target_modules="all-linear", use_dora=True))
    assert meta.get_nb_trainable_parameters() == real.get_nb_trainable_parameters()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_and_loss_goes_down(checkpointing):
    tiny = MODELS["llama"]
    base = tiny.fresh()
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", lora_dropout=0.1))
    model.train()
    ids = tiny.inputs()["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", ["gpt2", "vit"])
def test_dora_recomputes_the_base_output_when_dropout_is_on(name):
    """With dropout the base output must be recomputed on the dropped input; at p=0 it equals the eval path."""
    tiny = MODELS[name]
    targets = {"gpt2": ["c_attn", "c_fc"], "vit": ["q_proj", "projection"]}[name]
    torch.manual_seed(0)
    base = tiny.fresh()
    with torch.no_grad():  # non-zero biases, which the recomputed base output must leave out
        for param_name, param in base.named_parameters():
            if param_name.endswith("bias"):
                param.normal_()
    model = get_peft_model(base, LoraConfig(task_type=tiny.task_type, use_dora=True, lora_dropout=0.5,
                                                    target_modules=targets, init_lora_weights=False))
    with torch.no_grad():  # as after training: magnitudes no longer equal the weight norms
        for param_name, param in model.named_parameters():
            if "lora_magnitude_vector" in param_name:
                param.mul_(1.5)
    model.eval()
    expected = model(**tiny.inputs()).logits
    for module in model.modules():
        if hasattr(module, "lora_dropout") and "default" in module.lora_dropout:
            module.lora_dropout["default"] = torch.nn.Dropout(p=0.0)  # a real dropout module that drops nothing
    model.train()
    for module in model.modules():  # keep the base model's own dropout out of it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.testing.assert_close(model(**tiny.inputs()).logits, expected, rtol=1e-5, atol=1e-5)
