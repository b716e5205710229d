"""peft_core's trainer against the standard recipe (transformers ``Trainer`` + ``peft``), side by side.

    python bench/trainer.py [--quick]

Both sides fine-tune SmolLM2-135M-Instruct (real weights, fp32, CPU) with the
same LoRA (r=16, alpha=32, no dropout, all attention and MLP projections) on
the same generated instruction data, with the same batch size, steps, learning
rate, AdamW, linear schedule and seed. Each side runs in its own fresh process,
one after the other, and its peak RSS is that child's own ``ru_maxrss``
(``os.wait4``). The eval loss of both saved adapters is computed here, by one
function over the same held-out rows: mean cross-entropy over completion tokens.

- standard: this script with ``--side standard`` (chat template, prompt labels
  -100, ``peft.get_peft_model``, ``Trainer``, ``DataCollatorForSeq2Seq``
  padding to the longest); tokens/s = sum of attention_mask / ``trainer.train()``.
- ours: ``python -m peft_core train config.yaml``, as a user runs it (defaults:
  padding-free batches, logits only at trained positions); with ``--packing``
  also a run with ``data.packing``. tokens/s = real tokens (from the step
  events) / elapsed_s of the last step event.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
BATCH, LR, SEED = 8, 2e-4, 0


@dataclass
class Setup:
    """The sizes of one benchmark run (the same for every side)."""

    train_rows: int  # a multiple of BATCH, so max_steps covers whole epochs on both sides
    eval_rows: int
    epochs: int
    max_length: int
    max_words: int  # longest completion in words (~1.3 tokens each)

    @property
    def steps(self) -> int:
        return self.epochs * self.train_rows // BATCH


QUICK = Setup(train_rows=24, eval_rows=8, epochs=1, max_length=64, max_words=30)
FULL = Setup(train_rows=256, eval_rows=64, epochs=1, max_length=256, max_words=130)

# -- data ------------------------------------------------------------------------------------
NOUNS = [
    "river", "garden", "engine", "library", "market", "bridge", "forest", "window", "planet", "village",
    "teacher", "robot", "harbor", "mountain", "recipe", "museum", "orchard", "tunnel", "lantern", "compass"
]
ADJS = [
    "quiet", "ancient", "bright", "narrow", "busy", "gentle", "rusty", "hidden", "modern", "frozen", "golden",
    "wooden", "noisy", "tiny", "vast"
]
VERBS = [
    "builds", "carries", "protects", "explains", "measures", "follows", "repairs", "collects", "paints", "visits",
    "guides"
]
PLACES = ["the coast", "a small town", "the old city", "the northern hills", "the valley", "an island", "the capital"]


def _sentence(rng: random.Random) -> str:
    return (f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJS)} "
            f"{rng.choice(NOUNS)} near {rng.choice(PLACES)}.")


def _example(rng: random.Random, max_words: int) -> dict:
    noun, adj = rng.choice(NOUNS), rng.choice(ADJS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return {"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
    if kind == 1:
        prompt = f"Name some things a {adj} {noun} might have."
        words = rng.sample(NOUNS + ADJS, rng.randint(3, 12))
        return {"prompt": prompt, "completion": "It might have: " + ", ".join(words) + "."}
    target = math.exp(rng.uniform(math.log(8), math.log(max_words)))  # log-uniform lengths, few to many words
    text = []
    while sum(len(s.split()) for s in text) < target:
        text.append(_sentence(rng))
    return {"prompt": f"Describe the {adj} {noun} of {rng.choice(PLACES)}.", "completion": " ".join(text)}


def write_data(folder: Path, setup: Setup) -> tuple[Path, list[dict], list[dict]]:
    """Seeded prompt/completion pairs: a chat-messages JSONL for training, and the held-out rows."""
    rng = random.Random(1234)
    rows = [_example(rng, setup.max_words) for _ in range(setup.train_rows + setup.eval_rows)]
    train, held_out = rows[:setup.train_rows], rows[setup.train_rows:]
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for row in train:
            messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path, train, held_out


def read_pairs(path: Path) -> list[dict]:
    rows = [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]
    return [{"prompt": m[0]["content"], "completion": m[1]["content"]} for m in rows]


def encode(tokenizer, prompt: str, completion: str, max_length: int) -> dict:
    """The standard recipe: chat template, labels -100 on the prompt part, cut at max_length."""
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    assert full.startswith(head), "chat template renders the prompt differently once answered"
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * n_head + ids[n_head:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[:len(ids)]}


# -- the standard side (child process) ---------------------------------------------------------
def run_standard(work: Path, setup: Setup) -> None:
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from peft_core.presets import resolve_model

    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", target_modules=TARGETS, **LORA))
    rows = [encode(tokenizer, r["prompt"], r["completion"], setup.max_length) for r in read_pairs(work / "train.jsonl")]
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    real_tokens = [0]

    def collate(features):
        batch = pad(features)
        real_tokens[0] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(output_dir=str(work / "standard-out"), per_device_train_batch_size=BATCH,
                             max_steps=setup.steps, learning_rate=LR, lr_scheduler_type="linear", seed=SEED,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    model.save_pretrained(str(work / "standard-adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {"tokens": real_tokens[0], "wall_s": wall, "train_loss": losses[-1] if losses else float("nan"),
              "mean_loss": sum(losses) / max(len(losses), 1)}
    (work / "standard.json").write_text(json.dumps(result))


# -- our side ---------------------------------------------------------------------------------
def write_config(work: Path, setup: Setup, name: str, packing: bool) -> Path:
    import yaml

    training = {"output_dir": str(work / name), "batch_size": BATCH, "learning_rate": LR, "lr_scheduler": "linear",
                "seed": SEED, "eval_steps": None, "save_steps": None, "logging_steps": 1, "precision": "fp32"}
    # packed rows hold several examples: train the same examples for the same epochs (fewer, fuller steps)
    training.update({"max_steps": None, "num_epochs": setup.epochs} if packing else {"max_steps": setup.steps})
    config = {
        "task": "causal_lm",
        "model": {"name_or_path": MODEL},
        "method": {"name": "lora", "target_modules": TARGETS, **LORA},
        "data": {"train": str(work / "train.jsonl"), "format": "auto", "max_length": setup.max_length,
                 "eval_fraction": 0.0, "packing": packing},
        "training": training,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_ours(run_dir: Path) -> dict:
    """Real tokens, training time and last loss from the run's step events."""
    steps = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    steps = [e for e in steps if e.get("type") == "step"]
    tokens, previous = 0.0, 0.0
    for event in steps:  # logging_steps 1: each event's tokens_per_s covers the time since the one before
        tokens += event["tokens_per_s"] * (event["elapsed_s"] - previous)
        previous = event["elapsed_s"]
    return {"tokens": round(tokens), "wall_s": steps[-1]["elapsed_s"], "train_loss": steps[-1]["loss"],
            "mean_loss": sum(e["loss"] for e in steps) / len(steps), "steps": steps[-1]["step"]}


# -- running the children -----------------------------------------------------------------------
def run_child(command: list[str], log: Path) -> int:
    """Run one child to the end; its own peak RSS in MiB (ru_maxrss of just that process tree's leader)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}; log above ({log})")
    return usage.ru_maxrss // 1024


# -- eval loss, the same for both adapters ------------------------------------------------------
def eval_loss(adapter: Path, kind: str, held_out: list[dict], setup: Setup) -> float:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_core.presets import resolve_model

    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if kind == "peft":
        import peft
        model = peft.PeftModel.from_pretrained(base, str(adapter))
    else:
        from peft_core.peft_model import PeftModel
        model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    rows = [encode(tokenizer, r["prompt"], r["completion"], setup.max_length) for r in held_out]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            mask = torch.tensor([r["attention_mask"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in chunk])
            logits = model(input_ids=ids, attention_mask=mask).logits  # (batch, width, vocab)
            shifted = labels[:, 1:]
            total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), shifted.flatten(), ignore_index=-100,
                                           reduction="sum"))
            count += int((shifted != -100).sum())
    return total / count


# -- the report ---------------------------------------------------------------------------------
def table(results: dict[str, dict]) -> str:
    lines = ["| side | steps | real tokens | tokens/s | train wall (s) | peak RSS (MiB) | final train loss | mean train loss | eval loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['steps']} | {r['tokens']} | {r['tokens'] / r['wall_s']:.0f} | {r['wall_s']:.1f} | "
                     f"{r['rss_mib']} | {r['train_loss']:.3f} | "
                     f"{r['mean_loss']:.3f} | {r['eval_loss']:.3f} |")
    return "\n".join(lines)


def pick_ours(results: dict[str, dict]) -> str:
    """The faster of our settings whose eval loss is within 2% of the standard's (else simply the faster)."""
    theirs = results["Trainer+peft"]["eval_loss"]
    ours = [n for n in results if n.startswith("peft_core")]
    close = [n for n in ours if results[n]["eval_loss"] <= theirs * 1.02] or ours
    return max(close, key=lambda n: results[n]["tokens"] / results[n]["wall_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (~2 minutes) that still prints the result")
    parser.add_argument("--packing", action="store_true", help="also a peft_core run with data.packing (fewer, fuller steps)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both sides (order of the batches, init)")
    parser.add_argument("--side", choices=["standard"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help="keep the data, logs, adapters and events in this folder (default: a temp one)")
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    global SEED
    SEED = args.seed
    if args.side == "standard":
        return run_standard(Path(args.work), setup)

    from peft_core.presets import resolve_model
    resolve_model(MODEL)  # convert the weights once, before anything is timed
    script = str(Path(__file__).resolve())
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        _, _, held_out = write_data(work, setup)
        rss = run_child([sys.executable, script, "--side", "standard", "--work", str(work), "--seed", str(SEED)]
                        + ["--quick"] * args.quick,
                        work / "standard.log")
        results["Trainer+peft"] = {**json.loads((work / "standard.json").read_text()), "steps": setup.steps,
                                   "rss_mib": rss,
                                   "eval_loss": eval_loss(work / "standard-adapter", "peft", held_out, setup)}
        for name, packing in [("peft_core", False), ("peft_core packing", True)][:2 if args.packing else 1]:
            folder = name.replace(" ", "-")
            config = write_config(work, setup, folder, packing)
            rss = run_child([sys.executable, "-m", "peft_core", "train", str(config)], work / f"{folder}.log")
            results[name] = {**read_ours(work / folder), "rss_mib": rss,
                             "eval_loss": eval_loss(work / folder, "peft_core", held_out, setup)}
    report(results, setup, args)


def report(results: dict[str, dict], setup: Setup, args: argparse.Namespace) -> None:
    import torch

    print(f"command: python bench/trainer.py{' --quick' if args.quick else ''}{' --packing' * args.packing}"
          f"{f' --seed {SEED}' if SEED else ''}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"setup: {MODEL} fp32, LoRA r=16 alpha=32 on {','.join(TARGETS)}; {setup.train_rows} train rows, "
          f"{setup.eval_rows} eval rows, batch {BATCH}, {setup.epochs} epoch(s), max_length {setup.max_length}, "
          f"lr {LR} linear, seed {SEED}")
    print()
    print(table(results))
    print()
    best, theirs = pick_ours(results), results["Trainer+peft"]
    ours = results[best]
    speed = (ours["tokens"] / ours["wall_s"]) / (theirs["tokens"] / theirs["wall_s"])
    print(f"final line uses: {best}")
    print(f"trainer: tokens/s x{speed:.2f} vs Trainer+peft, peak RSS x{ours['rss_mib'] / theirs['rss_mib']:.2f}, "
          f"eval loss {ours['eval_loss']:.3f} vs {theirs['eval_loss']:.3f}")


if __name__ == "__main__":
    main()
