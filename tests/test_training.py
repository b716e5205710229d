"""Training runs end to end on tiny models: every task, resume, stop, packing, QLoRA, failures."""

from __future__ import annotations

import json
import shutil

import peft
import pytest
import torch
from tiny_runs import SAMPLES, run_config

from peft_core import PeftModel
from peft_core.tasks import make_task
from peft_core.training.batching import epoch_batches
from peft_core.training.events import DoneEvent, EstimateEvent, EvalEvent, StepEvent, read_events
from peft_core.training.run import encode_all, read_labels, train

TASKS = {
    # name: (task, model, data file, extra data settings)
    "alpaca": ("causal_lm", "llama", "alpaca.jsonl", {}),
    "chat": ("causal_lm", "llama", "chat_messages.jsonl", {}),
    "sharegpt": ("causal_lm", "llama", "sharegpt.json", {}),
    "prompt_completion": ("causal_lm", "llama", "prompt_completion.jsonl", {}),
    "raw_text": ("causal_lm", "llama", "raw_text.txt", {}),
    "packed": ("causal_lm", "llama", "chat_messages.jsonl", {"packing": True}),
    "seq2seq": ("seq2seq", "t5", "seq2seq.jsonl", {}),
    # real MiniLM weights: a random tiny encoder cannot tell these texts apart
    "seq_cls": ("seq_cls", "minilm", "classification.csv", {}),
    "token_cls": ("token_cls", "minilm", "token_classification.jsonl", {}),
    "image_cls": ("image_cls", "vit", "shapes", {}),
}


def steps_of(run_dir) -> list[StepEvent]:
    return [e for e in read_events(run_dir / "events.jsonl")[0] if isinstance(e, StepEvent)]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_trains_and_saves_a_peft_adapter(name, model_dirs, tmp_path):
    task, model, data_file, data = TASKS[name]
    run_dir = tmp_path / "run"
    # evaluated on its own training data: does the loop learn (tiny random models do not generalise)
    data = {**data, "eval": str(SAMPLES / data_file)}
    config = run_config(task, model_dirs[model], SAMPLES / data_file, run_dir, data=data, max_steps=12, eval_steps=12)
    done = train(config)
    assert done.status == "ok", done.error
    losses = [e.loss for e in steps_of(run_dir)]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    events = read_events(run_dir / "events.jsonl")[0]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [e.step for e in evals] == [0, 12]
    if task in ("seq_cls", "token_cls", "image_cls"):  # a confusion matrix over the labels, rows = truth
        details = evals[-1].details
        assert read_labels(run_dir) == details["labels"]  # kept with the run, for testing the adapter later
        assert len(details["confusion"]) == len(details["labels"]) >= 2
        right = sum(details["confusion"][i][i] for i in range(len(details["labels"])))
        total = sum(map(sum, details["confusion"]))
        assert right / total == pytest.approx(evals[-1].metrics["accuracy"])
    # the memory estimate before loading anything, then again with the peak measured after 3 steps
    estimates = [e for e in events if isinstance(e, EstimateEvent)]
    assert [e.step for e in estimates] == [0, 3] and estimates[0].measured_peak_gb is None
    assert estimates[0].estimate["total_gb"] > 0 and estimates[1].measured_peak_gb > 0
    assert evals[-1].metrics["eval_loss"] < evals[0].metrics["eval_loss"], evals  # it learns
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "ok"
    assert (run_dir / "adapter_model.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    # the adapter loads back, here and in the real peft, with the same outputs
    runner = make_task(config)
    runner.load_processor()
    examples, _ = runner.read()
    inputs = runner.collate(encode_all(runner, examples[:2]))  # labels too: a seq2seq model makes its decoder inputs from them
    base = runner.load_model("fp32", torch.device("cpu"))
    ours = PeftModel.from_pretrained(base, run_dir)
    twin = runner.load_model("fp32", torch.device("cpu"))
    theirs = peft.PeftModel.from_pretrained(twin, str(run_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_resume_repeats_the_uninterrupted_run_step_for_step(model_dirs, tmp_path):
    method = {"name": "lora", "r": 4, "lora_dropout": 0.2}  # dropout: the random state must come back too
    whole = tmp_path / "whole"
    common = dict(method=method, max_steps=8, save_steps=4, batch_size=3, gradient_accumulation_steps=2)
    assert train(run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", whole, **common)).status == "ok"
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-4", resumed / "checkpoint-4")
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", resumed, resume_from="latest", **common)
    assert train(config).status == "ok"
    expected = [(e.step, e.loss) for e in steps_of(whole) if e.step > 4]
    assert [(e.step, e.loss) for e in steps_of(resumed)] == expected


def test_gradient_accumulation_gives_the_same_step_as_one_big_batch(model_dirs, tmp_path):
    """4 examples of different lengths: one batch of 4, or 2 x 2 accumulated, must be the same update
    (the loss is the mean over all trained tokens of the step, not a mean of batch means)."""
    from safetensors.torch import load_file

    data = tmp_path / "four.jsonl"
    data.write_text("".join((SAMPLES / "prompt_completion.jsonl").read_text().splitlines(keepends=True)[:4]))
    results = {}
    for name, (batch, accumulate) in {"big": (4, 1), "accumulated": (2, 2)}.items():
        config = run_config("causal_lm", model_dirs["llama"], data, tmp_path / name, max_steps=1, batch_size=batch,
                            gradient_accumulation_steps=accumulate, data={"eval_fraction": 0.0},
                            method={"name": "lora", "r": 4, "init_lora_weights": "gaussian"})
        assert train(config).status == "ok"
        results[name] = (steps_of(tmp_path / name)[0].loss, load_file(tmp_path / name / "adapter_model.safetensors"))
    assert results["big"][0] == pytest.approx(results["accumulated"][0], rel=1e-5)
    for key, value in results["big"][1].items():
        torch.testing.assert_close(results["accumulated"][1][key], value, rtol=1e-4, atol=1e-6)


def test_stop_leaves_a_loadable_adapter(model_dirs, tmp_path):
    run_dir = tmp_path / "run"
    seen = []
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", run_dir, max_steps=50)
    done = train(config, callbacks=[seen.append], stop=lambda: sum(isinstance(e, StepEvent) for e in seen) >= 2)
    assert done.status == "stopped"
    assert len(steps_of(run_dir)) == 2  # honoured before the next optimizer step
    base = make_task(config).load_model("fp32", torch.device("cpu"))
    PeftModel.from_pretrained(base, run_dir)
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file()


def test_a_stop_file_in_the_run_directory_stops_the_run(model_dirs, tmp_path):
    run_dir = tmp_path / "run"
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", run_dir, max_steps=50)

    def touch_stop(event):
        if isinstance(event, StepEvent) and event.step == 1:
            (run_dir / "STOP").touch()

    assert train(config, callbacks=[touch_stop]).status == "stopped"
    assert len(steps_of(run_dir)) == 1


def test_packing_gives_the_unpacked_loss_with_less_padding(model_dirs, tmp_path):
    # lengths from a few tokens to most of max_length: where padding costs the most
    data = tmp_path / "mixed.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "hum"]
    data.write_text("".join(
        json.dumps({"prompt": f"Say {n} words.", "completion": " ".join(words[i % len(words)] for i in range(n))}) + "\n"
        for n in [2, 40, 5, 33, 1, 60, 8, 21, 3, 50, 12, 2, 45, 6, 27, 4]
    ))
    losses, padding = {}, {}
    for packed in (False, True):
        config = run_config("causal_lm", model_dirs["llama"], data, tmp_path / str(packed),
                            data={"packing": packed, "max_length": 96})
        task = make_task(config)
        task.load_processor()
        examples, _ = task.read()
        rows = task.rows_for_training(encode_all(task, examples), seed=0)
        model = task.load_model("fp32", torch.device("cpu")).eval()
        # the batches training would make (length-grouped, so this is against the best unpacked case)
        plan = epoch_batches([task.length(row) for row in rows], 4, seed=0, epoch=0)
        batches = [task.collate([rows[i] for i in indices]) for indices in plan]
        items = sum(task.count_items(b) for b in batches)
        with torch.no_grad():
            losses[packed] = sum(float(task.loss(model, b, items)) for b in batches)
        padding[packed] = sum(b["input_ids"].numel() for b in batches) - task.count_tokens(rows)
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert padding[True] < padding[False] / 2, padding


def test_qlora_4bit_trains_on_the_cpu(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peft_core.presets import DEFAULT_LLM, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_LLM))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=len(tokenizer))).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    config = run_config("causal_lm", str(tmp_path / "m"), SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=10)
    config = config.with_overrides(["model.quantization=4bit", "model.gradient_checkpointing=true",
                                    "training.optimizer=adamw_8bit"])
    done = train(config)
    assert done.status == "ok", done.error
    losses = [e.loss for e in steps_of(tmp_path / "run")]
    assert sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.parametrize("method", [{"name": "adalora", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 2},
                                    {"name": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
                                    {"name": "ia3"}])
def test_other_methods_train_through_the_same_loop(method, model_dirs, tmp_path):
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run",
                        method=method, max_steps=8, learning_rate=3e-2)
    done = train(config)
    assert done.status == "ok", done.error
    if method["name"] == "adalora":
        import json

        saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
        assert saved["rank_pattern"], "the rank budget ran inside the loop"


def test_failures_end_the_run_with_a_reason(model_dirs, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\x00\x01\x02binary")
    done = train(run_config("causal_lm", model_dirs["llama"], bad, tmp_path / "run1"))
    assert done.status == "failed" and done.error_code == "not_text" and "bad.jsonl" in done.error
    assert isinstance(read_events(tmp_path / "run1" / "events.jsonl")[0][-1], DoneEvent)

    from peft_core.tasks.causal_lm import CausalLMTask

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CausalLMTask, "loss", out_of_memory)
    done = train(run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run2"))
    assert done.status == "failed" and done.error_code == "oom"
    assert done.advice and any("batch" in line for line in done.advice)
    assert "GB" in done.advice[0], done.advice  # changes with their estimates, from the model's own shape


def test_a_finished_run_is_never_overwritten(model_dirs, tmp_path):
    config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=1)
    assert train(config).status == "ok"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config)


def test_sharded_engines_refuse_what_they_cannot_do(model_dirs, tmp_path, monkeypatch):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    quantized = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "q")
    quantized.model.quantization = "4bit"
    done = train(quantized)
    assert done.status == "failed" and "DEEPSPEED cannot shard a 4bit model" in done.error and "ddp.yaml" in done.error
    accumulated = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "a",
                             gradient_accumulation_steps=2)
    done = train(accumulated)
    assert done.status == "failed" and "gradient_accumulation_steps to 1" in done.error


def test_gradient_checkpointing_gives_the_same_run(model_dirs, tmp_path):
    # non-reentrant checkpointing with frozen embeddings: the adapter still gets its gradients
    runs = {}
    for checkpointing in (False, True):
        config = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / str(checkpointing),
                            max_steps=3, method={"name": "lora", "r": 4, "init_lora_weights": "gaussian"})
        config.model.gradient_checkpointing = checkpointing
        assert train(config).status == "ok"
        runs[checkpointing] = [e.loss for e in steps_of(tmp_path / str(checkpointing))]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    assert runs[True][-1] != runs[True][0]  # it did train
