"""Padding-free batches and logits only where a token is trained: the same loss and gradients, less work."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_runs import SAMPLES, run_config
from torch import nn

from peft_core.tasks import make_task
from peft_core.tasks.causal_lm import CausalLMTask
from peft_core.tasks.packed import keeps_selected_logits, packing_problem
from peft_core.training.events import StepEvent
from peft_core.training.run import encode_all, train


def mixed_lengths(tmp_path):
    data = tmp_path / "mixed.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet"]
    data.write_text("".join(
        json.dumps({"prompt": f"Say {n} words.", "completion": " ".join(words[i % len(words)] for i in range(n))}) + "\n"
        for n in [2, 40, 5, 33, 1, 60, 8, 21]
    ))
    return data


def task_and_model(config):
    task = make_task(config)
    task.load_processor()
    examples, _ = task.read()
    rows = encode_all(task, examples)
    model = task.build_model("fp32", torch.device("cpu"))
    return task, model, rows


def loss_and_grads(task, model, rows, flat: bool, selected: bool):
    task.flat_batches, task.selected_logits = flat, selected
    batch = task.collate(rows)
    model.zero_grad()
    loss = task.loss(model, batch, task.count_items(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, batch


def test_a_flat_batch_with_selected_logits_gives_the_padded_loss_and_gradients(model_dirs, tmp_path):
    config = run_config("causal_lm", model_dirs["llama"], mixed_lengths(tmp_path), tmp_path / "run")
    task, model, rows = task_and_model(config)
    assert task.flat_batches and not task.groups_by_length  # the default, found to work for this model
    model.train()
    padded_loss, padded_grads, padded = loss_and_grads(task, model, rows, flat=False, selected=False)
    flat_loss, flat_grads, flat = loss_and_grads(task, model, rows, flat=True, selected=True)
    tokens = task.count_tokens(rows)
    assert flat["input_ids"].shape[0] == math.ceil(tokens / config.data.max_length)  # rows of about max_length
    assert flat["input_ids"].numel() - tokens < 0.05 * tokens  # balanced rows: almost no padding
    assert padded["input_ids"].numel() > 2 * flat["input_ids"].numel()
    assert flat_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in padded_grads.items():
        assert torch.allclose(flat_grads[name], grad, rtol=1e-4, atol=1e-7), name
    assert task.count_items(flat) == task.count_items(padded)


def test_padding_free_training_matches_padded_training_step_for_step(model_dirs, tmp_path, monkeypatch):
    """The same batches (the padded run's not grouped by length), the same losses: no work is left out."""
    runs = {}
    for flat in (False, True):
        config = run_config("causal_lm", model_dirs["llama"], mixed_lengths(tmp_path), tmp_path / f"run-{flat}",
                            data={"padding_free": flat}, max_steps=4, batch_size=3)
        with monkeypatch.context() as patch:
            if not flat:
                patch.setattr(CausalLMTask, "groups_by_length", property(lambda self: False))
            events = []
            done = train(config, callbacks=[events.append])
        assert done.status == "ok", done.error
        runs[flat] = [e.loss for e in events if isinstance(e, StepEvent)]
    assert len(runs[True]) == 4
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


class AttendsToEverything(nn.Module):
    """A stand-in LM that mixes every earlier token whatever the position ids say."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)

    def forward(self, input_ids, position_ids=None, use_cache=False, logits_to_keep=0):
        return SimpleNamespace(logits=self.embed(input_ids).cumsum(dim=1))


def test_models_that_cannot_take_packed_rows_are_found(model_dirs, tmp_path):
    problem = packing_problem(AttendsToEverything())
    assert problem.code == "packing_attends_across" and "attend to each other" in str(problem)
    assert not keeps_selected_logits(AttendsToEverything())  # not transformers' slicing helper
    data = mixed_lengths(tmp_path)
    # prompt methods: virtual tokens once per row; packing is refused, padding-free quietly pads instead
    prompt = {"name": "prompt_tuning", "num_virtual_tokens": 4}
    packed = run_config("causal_lm", model_dirs["llama"], data, tmp_path / "a", method=prompt, data={"packing": True})
    with pytest.raises(ValueError, match="data.packing cannot be used with a prompt method: it adds its virtual tokens"):
        task_and_model(packed)
    task, model, rows = task_and_model(run_config("causal_lm", model_dirs["llama"], data, tmp_path / "b", method=prompt))
    assert not task.flat_batches and task.groups_by_length and not keeps_selected_logits(model)
    batch = task.collate(rows)
    assert torch.isfinite(task.loss(model, batch, task.count_items(batch)))


def test_sample_rows_still_train_end_to_end_padding_free(model_dirs, tmp_path):
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=3)
    assert config.data.padding_free
    assert train(config).status == "ok"
