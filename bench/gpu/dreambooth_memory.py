"""Peak GPU memory and seconds per step of DreamBooth LoRA at Stable Diffusion 1.5's shape.

Builds a UNet, VAE and CLIP text encoder from SD 1.5's real configurations
(random weights: memory and speed do not depend on the values) and trains them
through peft_core's own DreamBooth run at 512x512, batch 1, fp16 (bf16 where the
GPU has it natively), gradient checkpointing and 8-bit AdamW: once with a UNet
LoRA only, once with a text-encoder LoRA too. Prints a Markdown table for
docs/benchmarks.md. Needs no network.

    python bench/gpu/dreambooth_memory.py            # on a CUDA GPU
    python bench/gpu/dreambooth_memory.py --tiny     # a smoke run of the script on the CPU (toy sizes)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_core.run_config import RunConfig  # noqa: E402
from peft_core.training.events import EstimateEvent, StepEvent, read_events  # noqa: E402
from peft_core.training.run import train  # noqa: E402

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
             "projection_dim": 768}


def build_sd15(target: Path) -> None:
    """An SD 1.5-shaped pipeline folder (fp16 weights, random), with the offline tokenizer of tiny-sd-random."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from peft_core.presets import resolve_model

    tiny = Path(resolve_model("tiny-sd-random"))
    AutoTokenizer.from_pretrained(tiny / "tokenizer").save_pretrained(target / "tokenizer")
    UNet2DConditionModel(**SD15_UNET).to(torch.float16).save_pretrained(target / "unet")
    AutoencoderKL(**SD15_VAE).to(torch.float16).save_pretrained(target / "vae")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(torch.float16).save_pretrained(target / "text_encoder")
    DDIMScheduler.from_pretrained(tiny / "scheduler").save_pretrained(target / "scheduler")
    (target / "model_index.json").write_text((tiny / "model_index.json").read_text())


def run(model: str, images: str, output: Path, text_encoder: bool, resolution: int, steps: int) -> dict:
    config = RunConfig.from_dict({
        "task": "dreambooth",
        "model": {"name_or_path": model, "gradient_checkpointing": True},
        # the PEFT README's DreamBooth recipe: r 16, alpha 27 on the UNet; r 16, alpha 17 on the text encoder
        "method": {"name": "lora", "r": 16, "lora_alpha": 27, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
        "data": {"train": images},
        "dreambooth": {"instance_prompt": "a photo of sks mug", "with_prior_preservation": False,
                       "resolution": resolution, "train_text_encoder": text_encoder, "text_encoder_r": 16,
                       "text_encoder_alpha": 17, "validation_steps": None},
        "training": {"output_dir": str(output), "max_steps": steps, "batch_size": 1, "learning_rate": 1e-4,
                     "optimizer": "adamw_8bit", "save_steps": None, "eval_steps": None},
    })
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    done = train(config)
    if done.status != "ok":
        raise SystemExit(f"run failed: {done.error}")
    events = read_events(output / "events.jsonl")[0]
    step_events = [e for e in events if isinstance(e, StepEvent)]
    measured = [e for e in events if isinstance(e, EstimateEvent) and e.measured_peak_gb is not None]
    later = step_events[len(step_events) // 2:]  # after warm-up
    per_step = (later[-1].elapsed_s - later[0].elapsed_s) / max(len(later) - 1, 1)
    peak = max(e.mem_peak_gb for e in step_events)
    return {"text_encoder": text_encoder, "peak_gb": peak, "peak_after_3_steps_gb": measured[0].measured_peak_gb,
            "s_per_step": per_step, "precision": next(e.message for e in events if hasattr(e, "message"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any device (checks the script only)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    images = str(Path(__file__).resolve().parents[2] / "assets" / "samples" / "dreambooth")
    with tempfile.TemporaryDirectory(prefix="dreambooth-bench-") as tmp:
        tmp = Path(tmp)
        if args.tiny:
            model, resolution = "tiny-sd-random", 32
        else:
            if not torch.cuda.is_available():
                raise SystemExit("this benchmark measures GPU memory; run it on a CUDA GPU (or pass --tiny)")
            model, resolution = str(tmp / "sd15"), 512
            build_sd15(tmp / "sd15")
        rows = [run(model, images, tmp / f"run-{te}", te, resolution, args.steps) for te in (False, True)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"DreamBooth LoRA, {'tiny' if args.tiny else 'SD 1.5 shape'}, {resolution}x{resolution}, batch 1, "
          f"gradient checkpointing, 8-bit AdamW, on {device}")
    print("| text-encoder LoRA | peak memory (GB) | peak after 3 steps (GB) | s / step |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {'yes' if row['text_encoder'] else 'no'} | {row['peak_gb']:.2f} | "
              f"{row['peak_after_3_steps_gb']:.2f} | {row['s_per_step']:.3f} |")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
