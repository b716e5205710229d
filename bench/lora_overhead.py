"""What a LoRA adapter costs in time on SmolLM2-135M (fp32, CPU): one training step and inference.

LoRA r=16 on every attention and MLP projection (q, k, v, o, gate, up, down),
with a random non-zero B so the adapter really changes the outputs. Three ratios:

- training step: LoRA forward + backward (gradients only to the adapter) over the
  frozen base doing forward + backward to its input embeddings, so that the
  base's backward also runs through every layer. The ideal overhead is about
  1 + 3r/d per adapted layer (a few percent at r=16, d=576);
- unmerged inference: the LoRA model's forward over the base's (no grad);
- merged inference: ``merge_and_unload`` of a copy over the base (ideal 1.00),
  and the largest difference between merged and unmerged logits.

Medians of several timed repeats after warm-up, ``time.perf_counter``, threads
left as torch sets them. Needs no network.

    python bench/lora_overhead.py            # batch 4 x 256 for training, 8 x 256 for inference
    python bench/lora_overhead.py --quick    # a smoke run (batch 2 x 64, fewer repeats)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peft_core import LoraConfig, get_peft_model  # noqa: E402
from peft_core.presets import resolve_model  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 16


def paired_medians(a: Callable[[], None], b: Callable[[], None], warmup: int, repeats: int) -> tuple[float, float]:
    """Median wall times of ``a`` and ``b``, timed alternately (so drift of a shared CPU hits both alike)."""
    for _ in range(warmup):
        a()
        b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def load_base() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    return model.eval()  # no dropout anywhere: the two models do the same work


def add_lora(base: torch.nn.Module) -> torch.nn.Module:
    """The base with a LoRA whose B is random (std 0.01), so it changes the outputs."""
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS,
                        init_lora_weights="gaussian", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.01)
    return model.eval()


def lora_step(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """One LoRA training step: loss forward and backward, gradients to the adapter only."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
    return step


def base_step(base: torch.nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """The frozen base's forward and backward to its input embeddings (so backward crosses every layer)."""
    embed = base.get_input_embeddings()

    def step() -> None:
        inputs = embed(ids).detach().requires_grad_(True)  # (batch, seq, d)
        base(inputs_embeds=inputs, labels=ids).loss.backward()
    return step


def forward(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(input_ids=ids)
    return run


def measure(quick: bool) -> dict:
    torch.manual_seed(0)
    seq = 64 if quick else 256
    train_batch, infer_batch = (2, 2) if quick else (4, 8)
    warmup, repeats = (1, 2) if quick else (2, 7)

    base = load_base()
    for param in base.parameters():
        param.requires_grad_(False)
    vocab = base.config.vocab_size
    train_ids = torch.randint(0, vocab, (train_batch, seq))
    infer_ids = torch.randint(0, vocab, (infer_batch, seq))
    lora = add_lora(copy.deepcopy(base))  # the base stays unwrapped, to time it side by side
    merged = copy.deepcopy(lora).merge_and_unload().eval()

    t_base_train, t_lora_train = paired_medians(base_step(base, train_ids), lora_step(lora, train_ids), warmup, repeats)
    t_base_infer, t_lora_infer = paired_medians(forward(base, infer_ids), forward(lora, infer_ids), warmup, repeats)
    _, t_merged_infer = paired_medians(forward(base, infer_ids), forward(merged, infer_ids), warmup, repeats)

    with torch.no_grad():
        base_logits = base(input_ids=infer_ids).logits
        unmerged = lora(input_ids=infer_ids).logits
        merged_logits = merged(input_ids=infer_ids).logits
        # the same LoRA model in fp64: how far fp32 rounding alone moves the logits on these inputs
        exact = copy.deepcopy(lora).double()(input_ids=infer_ids).logits
    return {
        "train": t_lora_train / t_base_train,
        "unmerged": t_lora_infer / t_base_infer,
        "merged": t_merged_infer / t_base_infer,
        "max_diff": (merged_logits - unmerged).abs().max().item(),
        "fp32_error": max((unmerged - exact).abs().max().item(), (merged_logits - exact).abs().max().item()),
        "adapter_effect": (unmerged - base_logits).abs().max().item(),
        "seconds": {"base train": t_base_train, "lora train": t_lora_train, "base infer": t_base_infer,
                    "lora infer": t_lora_infer, "merged infer": t_merged_infer},
        "shapes": f"train {train_batch}x{seq}, inference {infer_batch}x{seq}, {repeats} repeats",
    }


def table(r: dict) -> str:
    rows = [("train step (LoRA / base fwd+bwd)", r["train"], 1.10, r["train"] <= 1.10),
            ("unmerged inference (LoRA / base)", r["unmerged"], 1.10, r["unmerged"] <= 1.10),
            # timing noise on a shared CPU: merged counts as met within 3% of the base
            ("merged inference (merged / base)", r["merged"], 1.00, r["merged"] <= 1.03)]
    lines = ["| measure | ratio | goal | met? |", "|---|---|---|---|"]
    lines += [f"| {name} | x{ratio:.2f} | {'<=' if goal > 1 else ''}{goal:.2f} | {'yes' if ok else 'no'} |"
              for name, ratio, goal, ok in rows]
    # random tokens drive SmolLM2 to large activations: fp32 rounding alone moves logits by ~1e-3 there,
    # so the merged model is held to the fp64 model's distance rather than a fixed 1e-4
    tolerance = max(1e-4, 2 * r["fp32_error"])
    lines.append(f"| max abs merged - unmerged logits | {r['max_diff']:.1e} | <={tolerance:.1e} | "
                 f"{'yes' if r['max_diff'] <= tolerance else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    args = parser.parse_args()
    r = measure(args.quick)
    print(f"SmolLM2-135M fp32 CPU, {torch.get_num_threads()} threads, LoRA r={RANK} on {', '.join(TARGETS)}; "
          f"{r['shapes']}")
    print("seconds (median): " + ", ".join(f"{k} {v:.3f}" for k, v in r["seconds"].items()))
    print(f"max |LoRA - base| logits {r['adapter_effect']:.2e} (the adapter changes the output); "
          f"max |merged-unmerged| {r['max_diff']:.1e}, fp32 rounding alone (vs the fp64 model) {r['fp32_error']:.1e}\n")
    print(table(r) + "\n")
    print(f"lora_overhead: train step x{r['train']:.2f} (goal <=1.10), unmerged inference x{r['unmerged']:.2f} "
          f"(goal <=1.10), merged x{r['merged']:.2f} (goal 1.00), max |merged-unmerged| {r['max_diff']:.1e}")


if __name__ == "__main__":
    main()
