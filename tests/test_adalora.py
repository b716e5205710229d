"""AdaLoRA: training with its hooks, the rank schedule, pruned saving, and the PEFT library as oracle."""

from __future__ import annotations

import json
import logging

import peft
import pytest
import torch
from models import MODELS, logits, twin
from safetensors.torch import load_file

from peft_core import PeftConfig, PeftModel, get_method, get_peft_model
from peft_core.methods.adalora import AdaLoraConfig, AdaLoraLinear
from peft_core.serialization import set_peft_model_state_dict

# 4 adapted layers (q_proj, v_proj in 2 blocks) x 6 triplets = 24, pruned to 4 x 2 = 8
# on a cubic curve from step tinit=2 to step total_step - tfinal = 12, every 2 steps.
SCHEDULE = dict(init_r=6, target_r=2, tinit=2, tfinal=4, deltaT=2, total_step=16)
STEPS = 18
LAYERS = [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "v")]


def config(**kwargs) -> AdaLoraConfig:
    return AdaLoraConfig(task_type="CAUSAL_LM", **{**SCHEDULE, **kwargs})


def batch() -> dict:
    ids = MODELS["llama"].inputs()["input_ids"]
    return {"input_ids": ids, "labels": ids}


def adapter_layers(model) -> dict[str, AdaLoraLinear]:
    return {k: m for k, m in model.base_model.model.named_modules() if isinstance(m, AdaLoraLinear)}


def kept(model) -> dict[str, int]:
    """Triplets per layer whose singular value is not zero."""
    return {k: int((m.lora_E["default"] != 0).sum()) for k, m in adapter_layers(model).items()}


def expected_budget(step: int) -> int:
    """The cubic schedule of the AdaLoRA paper, written out independently."""
    start, end, full, target = SCHEDULE["tinit"], SCHEDULE["total_step"] - SCHEDULE["tfinal"], 24, 8
    if step <= start:
        return full
    if step >= end:
        return target
    return int((full - target) * (1 - (step - start) / (end - start)) ** 3 + target)


def train(model, steps: int, hook: bool = True, peft_hook: bool = False, lr: float = 1e-2) -> list[float]:
    """A plain loop; the AdaLoRA hook runs after optimizer.step(), before zero_grad()."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batch()).loss
        loss.backward()
        optimizer.step()
        if peft_hook:
            model.base_model.update_and_allocate(step)
        elif hook:
            model.on_optimizer_step(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained():
    """The same AdaLoRA run in peft_core and in the PEFT library, from the same weights.

    Returns both models (eval mode) and, per step, the losses, the recorded
    rank patterns and the kept triplets.
    """
    base = MODELS["llama"].fresh()
    reference = twin(base)
    torch.manual_seed(3)
    theirs = peft.get_peft_model(reference, peft.AdaLoraConfig(task_type="CAUSAL_LM", **SCHEDULE))
    ours = get_peft_model(base, config())
    set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    history = {"ours": [], "theirs": [], "pattern": [], "peft_pattern": [], "kept": []}
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    ours.train(), theirs.train()
    for step in range(STEPS):
        for model, optimizer, name in ((ours, opt_ours, "ours"), (theirs, opt_theirs, "theirs")):
            loss = model(**batch()).loss
            loss.backward()
            optimizer.step()
            ours.on_optimizer_step(step) if name == "ours" else theirs.base_model.update_and_allocate(step)
            optimizer.zero_grad()
            history[name].append(loss.item())
        history["pattern"].append(ours.peft_config["default"].rank_pattern)
        theirs_pattern = theirs.peft_config["default"].rank_pattern
        history["peft_pattern"].append(None if theirs_pattern is None else list(theirs_pattern.values()))
        history["kept"].append(kept(ours))
    return ours.eval(), theirs.eval(), history


def test_training_matches_the_peft_library_step_for_step(trained):
    _, _, history = trained
    torch.testing.assert_close(torch.tensor(history["ours"]), torch.tensor(history["theirs"]), rtol=1e-6, atol=0)
    ours = [None if p is None else list(p.values()) for p in history["pattern"]]
    assert ours == history["peft_pattern"]


def test_loss_goes_down(trained):
    losses = trained[2]["ours"]
    assert losses[-1] < 0.9 * losses[0], losses


def test_kept_ranks_follow_the_schedule_down_to_target_r(trained):
    history = trained[2]
    end = SCHEDULE["total_step"] - SCHEDULE["tfinal"]
    for step, (pattern, kept_now) in enumerate(zip(history["pattern"], history["kept"])):
        total = sum(kept_now.values())
        if step <= SCHEDULE["tinit"]:
            assert pattern is None and total == 24, (step, kept_now)
        elif step % SCHEDULE["deltaT"] == 0 or step >= end:
            # just re-allocated (or fixed): exactly the budget's triplets carry a singular value
            assert total == expected_budget(step), (step, kept_now)
            assert {k: sum(v) for k, v in pattern.items()} == {f"{k}.lora_E": n for k, n in kept_now.items()}
    budgets = [expected_budget(s) for s in range(STEPS)]
    assert budgets[SCHEDULE["tinit"]] == 24 and budgets[end] == 8 and len(set(budgets)) > 3
    # after the last allocation the pattern no longer changes and pruned values stay zero
    assert all(p == history["pattern"][end] for p in history["pattern"][end:])
    assert all(k == history["kept"][end] for k in history["kept"][end:])


def test_orthogonality_term_is_added_while_training_only():
    model = get_peft_model(MODELS["llama"].fresh(), config(init_lora_weights=False, orth_reg_weight=0.3))
    gaps = []
    for layer in adapter_layers(model).values():
        A, B = layer.lora_A["default"].detach(), layer.lora_B["default"].detach()
        gaps += [torch.linalg.norm(A @ A.T - torch.eye(6)), torch.linalg.norm(B.T @ B - torch.eye(6))]
    expected = 0.3 * sum(gaps) / len(gaps)
    with torch.no_grad():
        eval_loss = model.eval()(**batch()).loss
        train_loss = model.train()(**batch()).loss  # the tiny llama has no dropout
    assert expected > 1
    torch.testing.assert_close(train_loss - eval_loss, expected, rtol=1e-5, atol=1e-5)


def test_saved_adapter_is_pruned_and_records_the_pattern_as_peft_does(trained, tmp_path):
    ours, theirs, _ = trained
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(str(tmp_path / "theirs"))
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_saved = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA"
    assert sorted(saved["rank_pattern"]) == [f"{k}.lora_E" for k in LAYERS]
    assert saved["rank_pattern"] == peft_saved["rank_pattern"]
    ranks = {k[: -len(".lora_E")]: sum(v) for k, v in saved["rank_pattern"].items()}
    assert sum(ranks.values()) == 8 and all(len(v) == 6 for v in saved["rank_pattern"].values())
    tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_tensors = load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(peft_tensors)
    for key, rank in ranks.items():
        prefix = f"base_model.model.{key}"
        assert tensors[f"{prefix}.lora_A"].shape == (rank, 32)
        assert tensors[f"{prefix}.lora_E"].shape == (rank, 1)
        assert tensors[f"{prefix}.lora_B"].shape == (32, rank)
        assert bool((tensors[f"{prefix}.lora_E"] != 0).all())
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, peft_tensors[name], rtol=1e-6, atol=1e-7)
    assert set(saved) <= set(peft.AdaLoraConfig(total_step=1).to_dict()), "keys the PEFT library does not know"


def test_round_trip_after_allocation_here_and_in_peft(trained, tmp_path):
    ours, _, _ = trained
    inputs = MODELS["llama"].inputs()
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    ranks = {k[: -len(".lora_E")]: sum(v) for k, v in ours.peft_config["default"].rank_pattern.items()}

    loaded = PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)
    assert {k: m.rank("default") for k, m in adapter_layers(loaded).items()} == ranks
    # fewer zero terms in the sums: equal up to float rounding order, as in the PEFT library itself
    torch.testing.assert_close(logits(loaded, inputs), expected, rtol=1e-6, atol=1e-6)
    loaded.save_pretrained(tmp_path / "again")  # a pruned adapter re-saves as it is
    first = load_file(tmp_path / "adapter_model.safetensors")
    again = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first) and first.keys() == again.keys()

    theirs = peft.PeftModel.from_pretrained(MODELS["llama"].fresh(), str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, rtol=1e-6, atol=1e-6)


def test_adapter_allocated_by_peft_loads_here(tmp_path):
    torch.manual_seed(4)
    theirs = peft.get_peft_model(MODELS["llama"].fresh(), peft.AdaLoraConfig(task_type="CAUSAL_LM", **SCHEDULE))
    train(theirs, STEPS, peft_hook=True)
    inputs = MODELS["llama"].inputs()
    expected = logits(theirs.eval(), inputs)
    theirs.save_pretrained(str(tmp_path))
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]

    ours = PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path)
    assert {f"{k}.lora_E": m.rank("default") for k, m in adapter_layers(ours).items()} == {
        k: sum(v) for k, v in pattern.items()
    }
    torch.testing.assert_close(logits(ours, inputs), expected, rtol=1e-6, atol=1e-6)
    merged = ours.merge_and_unload()
    torch.testing.assert_close(logits(merged, inputs), expected, rtol=1e-5, atol=1e-5)


def test_allocated_adapter_trains_on_at_its_ranks(trained, tmp_path):
    ours, _, _ = trained
    ours.save_pretrained(tmp_path)
    pattern = ours.peft_config["default"].rank_pattern
    loaded = PeftModel.from_pretrained(MODELS["llama"].fresh(), tmp_path, is_trainable=True)
    ranks = {k: m.rank("default") for k, m in adapter_layers(loaded).items()}
    before = logits(loaded.eval(), MODELS["llama"].inputs())
    train(loaded, 3)
    assert {k: m.rank("default") for k, m in adapter_layers(loaded).items()} == ranks
    assert loaded.peft_config["default"].rank_pattern == pattern
    assert not torch.equal(logits(loaded.eval(), MODELS["llama"].inputs()), before)


def test_forgetting_on_optimizer_step_is_reported_once(caplog):
    model = get_peft_model(MODELS["llama"].fresh(), config())
    with caplog.at_level(logging.WARNING, logger="peft_core"):
        train(model, 30, hook=False)
    warnings = [r.getMessage() for r in caplog.records if "on_optimizer_step" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "model.on_optimizer_step(global_step) after optimizer.step() and before optimizer.zero_grad()" in warnings[0]
    assert model.peft_config["default"].rank_pattern is None


def test_no_warning_when_the_hook_is_called_or_nothing_trains(caplog):
    model = get_peft_model(MODELS["llama"].fresh(), config())
    with caplog.at_level(logging.WARNING, logger="peft_core"):
        train(model, 12)
        model.train()
        for _ in range(20):  # gradient accumulation: many forwards, the weights unchanged
            model(**batch()).loss.backward()
    assert not [r for r in caplog.records if "on_optimizer_step" in r.getMessage()]


def test_saving_before_the_ranks_are_final_says_so(caplog, tmp_path):
    model = get_peft_model(MODELS["llama"].fresh(), config())
    train(model, 8)  # pruned at step 6; step 7 trains the pruned values off zero again
    assert any(sum(flags) < 6 for flags in model.peft_config["default"].rank_pattern.values())
    with caplog.at_level(logging.WARNING, logger="peft_core"):
        model.save_pretrained(tmp_path)
    assert "before its ranks are final" in caplog.text and "total_step - tfinal = 12" in caplog.text


def test_models_without_linear_layers_are_not_offered():
    from peft_core.methods.adalora import AdaLoraModel

    assert AdaLoraModel.model_problem(MODELS["llama"].fresh()) is None
    problem = AdaLoraModel.model_problem(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()))
    assert problem and "AdaLoRA adapts Linear layers" in problem


def test_hook_after_zero_grad_says_where_to_call_it():
    model = get_peft_model(MODELS["llama"].fresh(), config())
    model(**batch()).loss.backward()
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match=r"call it after optimizer.step\(\) and before optimizer.zero_grad\(\)"):
        model.on_optimizer_step(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_step": None}, "total_step is required for AdaLoRA: set it to the number of optimizer steps"),
        ({"total_step": 0}, "total_step must be a positive whole number"),
        ({"tinit": 10, "tfinal": 6}, r"tinit must be below total_step - tfinal = 10"),
        ({"target_r": 8}, "target_r must be a whole number from 1 to init_r=6"),
        ({"init_r": 0}, "init_r must be a positive whole number"),
        ({"r": 16}, "AdaLoRA does not use r"),
        ({"deltaT": 0}, "deltaT must be a whole number of steps >= 1"),
        ({"beta1": 1.0}, "beta1 must be a number between 0 and 1"),
        ({"orth_reg_weight": -1}, "orth_reg_weight must be a number >= 0"),
        ({"lora_dropout": 1.0}, "lora_dropout must be at least 0 and below 1"),
        ({"bias": "some"}, "bias must be one of none, all, lora_only"),
        ({"rank_pattern": {"q_proj": 4}}, "does not name a layer's singular values"),
        ({"rank_pattern": {"a.q_proj.lora_E": [True] * 4}}, "has 4 keep-flags but init_r is 6"),
        ({"rank_pattern": {"a.q_proj.lora_E": [1] * 6}}, "must be a list of true/false keep-flags"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_a_module_adalora_cannot_wrap_is_named():
    with pytest.raises(ValueError, match="'model.embed_tokens' is a Embedding, which this method cannot wrap"):
        get_peft_model(MODELS["llama"].fresh(), config(target_modules=["embed_tokens"]))


def test_rank_pattern_of_another_model_is_refused():
    pattern = {"model.layers.7.self_attn.q_proj.lora_E": [True] * 6}
    with pytest.raises(ValueError, match="no Linear layer at 'model.layers.7.self_attn.q_proj'; the adapter was"):
        get_peft_model(MODELS["llama"].fresh(), config(rank_pattern=pattern))


def test_config_crosses_to_peft_and_back(tmp_path):
    ours = config(lora_alpha=16, target_modules=["q_proj"], beta2=0.9)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert isinstance(theirs, peft.AdaLoraConfig)
    assert (theirs.init_r, theirs.target_r, theirs.total_step, theirs.tfinal, theirs.beta2) == (6, 2, 16, 4, 0.9)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = PeftConfig.from_pretrained(tmp_path / "theirs")
    assert isinstance(back, AdaLoraConfig) and back.lora_alpha == 16 and back.target_modules == ["q_proj"]
    assert get_method("ADALORA").config_cls is AdaLoraConfig and get_method("adalora").mergeable


def test_peft_defaults_for_t5_are_used():
    model = get_peft_model(MODELS["t5"].fresh(), AdaLoraConfig(task_type="SEQ_2_SEQ_LM", total_step=10))
    assert sorted(model.peft_config["default"].target_modules) == sorted(["q", "k", "v", "o", "wi", "wo"])


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_adalora_trains_on_a_quantized_base_and_loads_in_peft(kind, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # hidden size 64: bitsandbytes' CPU path needs rows of at least one 64-value block
    LlamaForCausalLM(LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=100, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )).save_pretrained(tmp_path / "base")
    quant = {
        "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
    }[kind]

    def quantized():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")

    model = get_peft_model(quantized(), config(total_step=4, tinit=0, tfinal=1, deltaT=1))
    assert {type(m.base_layer).__name__ for m in adapter_layers(model).values()} == {
        "4bit": {"Linear4bit"}, "8bit": {"Linear8bitLt"}}[kind]
    losses = train(model, 4)  # through the whole schedule: the saved ranks are final
    assert sum(kept(model).values()) == 8
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    inputs = MODELS["llama"].inputs()
    expected = logits(model.eval(), inputs)
    model.save_pretrained(tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(quantized(), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, rtol=1e-4, atol=1e-4)
