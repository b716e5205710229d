"""Does it learn? Exact-match accuracy on held-out sums before and after LoRA, IA3 and prompt tuning.

The task: "What is 37 + 45?" -> "82", two 2-digit numbers, answered with the
number only. Train and held-out rows are drawn from a seeded generator and never
share a question. Each method trains through peft_core's own run
(``peft_core.training.run.train``, task causal_lm, chat ``messages`` JSONL, so
training and evaluation both go through SmolLM2's chat template); each adapter
is then loaded with ``PeftModel.from_pretrained`` and answers every held-out
question with greedy decoding. Needs no network.

    python bench/learns.py            # ~1-3 minutes of training per method on 2 CPU cores
    python bench/learns.py --quick    # a smoke run: a few steps, 10 held-out rows
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peft_core import PeftModel  # noqa: E402
from peft_core.presets import resolve_model  # noqa: E402
from peft_core.run_config import RunConfig  # noqa: E402
from peft_core.training.run import train  # noqa: E402

MODEL = "smollm2-135m-instruct"
SYSTEM = "Answer with the number only."


@dataclass
class Plan:
    """One method's training: its settings and learning rate."""

    method: dict
    learning_rate: float


PLANS = {
    "lora": Plan({"name": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0}, 1e-3),
    "ia3": Plan({"name": "ia3"}, 1e-2),
    "prompt_tuning": Plan({"name": "prompt_tuning", "num_virtual_tokens": 16}, 3e-2),
}


def make_rows(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Distinct sums of two 2-digit numbers as {question, answer}; held-out questions never appear in training."""
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], n_train + n_heldout)
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in pairs]
    return rows[:n_train], rows[n_train:]


def messages(row: dict, with_answer: bool) -> list[dict]:
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["question"]}]
    return chat + [{"role": "assistant", "content": row["answer"]}] if with_answer else chat


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"messages": messages(row, with_answer=True)}) + "\n")


def run_config(name: str, plan: Plan, data: Path, run_dir: Path, steps: int, batch: int) -> RunConfig:
    return RunConfig.from_dict({
        "task": "causal_lm",
        "model": {"name_or_path": MODEL},
        "method": dict(plan.method),
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "heldout.jsonl"), "max_length": 128},
        "training": {"output_dir": str(run_dir / name), "max_steps": steps, "batch_size": batch,
                     "learning_rate": plan.learning_rate, "lr_scheduler": "linear",
                     "warmup_steps": max(1, steps // 20), "eval_steps": None, "save_steps": None,
                     "logging_steps": max(1, steps // 10), "precision": "fp32", "seed": 0},
    })


def exact_match(model: torch.nn.Module, tokenizer, rows: list[dict]) -> float:
    """Share of rows whose greedy answer, stripped, is exactly the expected one."""
    model.eval()
    right = 0
    for row in rows:
        ids = tokenizer.apply_chat_template(messages(row, with_answer=False), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]  # (1, prompt)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        right += answer == row["answer"]
    return right / len(rows)


def load_base() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps and 10 held-out rows (a smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps, batch, n_train, n_heldout = (2, 2, 40, 10) if args.quick else (150, 8, 2000, 100)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    train_rows, heldout = make_rows(n_train, n_heldout)
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-learns-") as tmp:
        data = Path(tmp)
        write_jsonl(data / "train.jsonl", train_rows)
        write_jsonl(data / "heldout.jsonl", heldout)
        torch.manual_seed(0)
        base_acc = exact_match(load_base(), tokenizer, heldout)
        for name, plan in PLANS.items():
            start = time.perf_counter()
            done = train(run_config(name, plan, data, data / "runs", steps, batch))
            seconds = time.perf_counter() - start
            if done.status != "ok":
                raise SystemExit(f"{name} training ended {done.status}: {done.error}")
            model = PeftModel.from_pretrained(load_base(), str(data / "runs" / name))
            results[name] = (exact_match(model, tokenizer, heldout), seconds)

    print(f"\nSmolLM2-135M-Instruct, 2-digit sums; {n_train} training rows, {steps} steps x batch {batch}, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | base accuracy | adapted accuracy | train time |\n|---|---|---|---|")
    for name, (acc, seconds) in results.items():
        print(f"| {name} (lr {PLANS[name].learning_rate:g}) | {base_acc:.0%} | {acc:.0%} | {seconds:.0f} s |")
    print(f"\nlearns: exact match base {base_acc:.0%} -> lora {results['lora'][0]:.0%}, "
          f"ia3 {results['ia3'][0]:.0%}, prompt_tuning {results['prompt_tuning'][0]:.0%} ({len(heldout)} held-out rows)")


if __name__ == "__main__":
    main()
