"""QLoRA at Llama-2-7B's shape on one GPU: peak memory and tokens/s, peft_core vs Trainer + peft.

Builds a Llama-2-7B-shaped model from its configuration (random fp16 weights,
written once to a temporary folder), then trains it with 4-bit NF4 base
weights, LoRA r 16 on every projection, batch 1 at 1024 tokens, gradient
checkpointing and 8-bit AdamW: once through ``python -m peft_core train`` and
once with transformers' ``Trainer`` + ``peft``, each in its own process. Goal:
under 16 GB peak (a T4). Needs a CUDA GPU and about 14 GB of free disk.

    python bench/gpu/qlora_memory.py [--steps 20] [--tiny]   # --tiny: a 2-layer model, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LENGTH = 1024


def build_model(target: Path, tiny: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peft_core.presets import resolve_model

    shape = dict(LLAMA2_7B, num_hidden_layers=2) if tiny else LLAMA2_7B
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.float16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def write_data(path: Path, rows: int) -> None:
    words = "the model learns to answer questions about numbers colours cities rivers and planets".split()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            text = " ".join(words[(i * 7 + j) % len(words)] for j in range(LENGTH))  # long rows: full 1024 tokens
            fh.write(json.dumps({"text": text}) + "\n")


def ours(model: Path, data: Path, out: Path, steps: int) -> dict:
    from peft_core.run_config import RunConfig

    config = RunConfig.from_dict({
        "task": "causal_lm",
        "model": {"name_or_path": str(model), "quantization": "4bit", "gradient_checkpointing": True},
        "method": {"name": "lora", "r": 16, "lora_alpha": 32, "target_modules": TARGETS},
        "data": {"train": str(data), "max_length": LENGTH, "eval_fraction": 0.0},
        "training": {"output_dir": str(out), "max_steps": steps, "batch_size": 1, "learning_rate": 2e-4,
                     "optimizer": "adamw_8bit", "eval_steps": None, "save_steps": None},
    })
    config.save_yaml(out.with_suffix(".yaml"))
    subprocess.run([sys.executable, "-m", "peft_core", "train", str(out.with_suffix(".yaml"))], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    from peft_core.training.events import StepEvent, read_events

    steps_seen = [e for e in read_events(out / "events.jsonl")[0] if isinstance(e, StepEvent)]
    later = steps_seen[len(steps_seen) // 2:]
    seconds = (later[-1].elapsed_s - later[0].elapsed_s) / max(len(later) - 1, 1)
    return {"peak_gb": max(e.mem_peak_gb for e in steps_seen), "tokens_per_s": LENGTH / seconds}


def standard(model: Path, data: Path, out: Path, steps: int) -> dict:
    """Run in a child: the usual QLoRA recipe with transformers' Trainer and peft."""
    code = f"""
import json, time, torch, peft, transformers
from datasets import load_dataset
tok = transformers.AutoTokenizer.from_pretrained({str(model)!r})
quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=torch.float16)
model = transformers.AutoModelForCausalLM.from_pretrained({str(model)!r}, quantization_config=quant, device_map={{"": 0}})
model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules={TARGETS!r}, task_type="CAUSAL_LM"))
rows = load_dataset("json", data_files={str(data)!r}, split="train")
rows = rows.map(lambda r: tok(r["text"], truncation=True, max_length={LENGTH}), remove_columns=["text"])
args = transformers.TrainingArguments(output_dir={str(out)!r}, per_device_train_batch_size=1, max_steps={steps},
    learning_rate=2e-4, optim="paged_adamw_8bit", fp16=True, gradient_checkpointing=True, logging_steps=1,
    report_to=[], save_strategy="no")
collator = transformers.DataCollatorForLanguageModeling(tok, mlm=False)
trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
torch.cuda.reset_peak_memory_stats()
start = time.time(); trainer.train(); seconds = time.time() - start
print("RESULT", json.dumps({{"peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                            "tokens_per_s": {LENGTH} * {steps} / seconds}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("this benchmark measures GPU memory; run it on a CUDA GPU")
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as tmp:
        tmp = Path(tmp)
        started = time.time()
        build_model(tmp / "model", args.tiny)
        write_data(tmp / "data.jsonl", 64)
        print(f"built the model in {time.time() - started:.0f} s")
        a = ours(tmp / "model", tmp / "data.jsonl", tmp / "ours", args.steps)
        b = standard(tmp / "model", tmp / "data.jsonl", tmp / "standard", args.steps)
    print(f"| side | peak GPU memory (GB) | tokens/s |\n|---|---|---|\n| peft_core | {a['peak_gb']:.2f} | "
          f"{a['tokens_per_s']:.0f} |\n| Trainer + peft | {b['peak_gb']:.2f} | {b['tokens_per_s']:.0f} |")
    print(f"qlora_gpu: tokens/s x{a['tokens_per_s'] / b['tokens_per_s']:.2f} vs Trainer+peft, peak memory "
          f"{a['peak_gb']:.2f} GB vs {b['peak_gb']:.2f} GB (goal under 16 GB) on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
