"""Stable Diffusion pieces for DreamBooth and inference, all from diffusers and transformers.

``load_components`` reads a diffusers pipeline folder (a preset, a local folder
or a Hub id): tokenizer, CLIP text encoder, VAE, UNet and the noise schedule.
``write_diffusers_lora`` writes the trained LoRA as ``pytorch_lora_weights.safetensors``
through diffusers' own writer, so ``pipe.load_lora_weights(dir)`` takes it as is.
``class_images`` makes (once) and caches the prior-preservation images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# the LoraConfig fields diffusers needs to rebuild the adapter (its loader passes them to peft.LoraConfig)
_DIFFUSERS_LORA_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_dora",
                          "use_rslora", "lora_dropout")


@dataclass
class SDComponents:
    source: str  # the folder they were read from
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler_config: dict  # the pipeline's own sampling schedule

    def noise_scheduler(self) -> Any:
        """The training (DDPM) form of the model's noise schedule."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def pipeline(self) -> Any:
        """A StableDiffusionPipeline over these very modules (adapters included, when injected)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )


def load_components(name_or_path: str, dtype: torch.dtype, device: torch.device) -> SDComponents:
    """The parts of a Stable Diffusion pipeline folder; a clear error when it is not one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from peft_core.models import check_model_name
    from peft_core.presets import resolve_model

    source = resolve_model(check_model_name(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        scheduler_config = _read_scheduler_config(source)
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"cannot load {name_or_path!r} as a Stable Diffusion pipeline ({first}); DreamBooth needs a diffusers "
            "folder or Hub id with tokenizer/, text_encoder/, vae/, unet/ and scheduler/"
        ) from None
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.to(device)
    return SDComponents(source, tokenizer, text_encoder, vae, unet, scheduler_config)


def _read_scheduler_config(source: str) -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler.load_config(source, subfolder="scheduler"))


def write_diffusers_lora(directory: str | os.PathLike, unet: nn.Module, text_encoder: nn.Module | None) -> bool:
    """``pytorch_lora_weights.safetensors`` for diffusers, from peft_core PeftModels; False if not LoRA."""
    from diffusers import StableDiffusionPipeline

    layers, metadata = {}, {}
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is None:
            continue
        config = model.peft_config[model.active_adapter]
        if config.peft_type.value != "LORA":
            return False
        prefix = model.base_model.key_prefix
        layers[name] = {key.removeprefix(prefix): value.detach().contiguous()
                        for key, value in model.get_adapter_state_dict().items()}
        saved = config.to_dict()
        metadata[name] = {k: saved[k] for k in _DIFFUSERS_LORA_FIELDS if k in saved}
    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=layers.get("unet"), text_encoder_lora_layers=layers.get("text_encoder"),
        unet_lora_adapter_metadata=metadata.get("unet"),
        text_encoder_lora_adapter_metadata=metadata.get("text_encoder"), safe_serialization=True,
    )
    return True


def class_images(components: SDComponents, prompt: str, count: int, resolution: int, seed: int,
                 steps: int, cache_root: str | os.PathLike) -> list[str]:
    """``count`` images of ``prompt`` from the frozen base model, made once and reused.

    They are cached under ``cache_root`` in a folder keyed by the model, the
    prompt, the count, the resolution and the sampling steps; a folder is only
    used once it is complete (written to a temporary folder, then renamed).
    """
    key = json.dumps([os.path.abspath(components.source), prompt, count, resolution, steps, seed])
    target = Path(cache_root) / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (target / "done.json").is_file():
        logger.info("reusing %d class images of %r from %s", count, prompt, target)
        return sorted(str(p) for p in target.glob("*.png"))[:count]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".class-images-", dir=target.parent))
    try:
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator("cpu").manual_seed(seed)
        logger.info("making %d class images of %r (once; cached in %s)", count, prompt, target)
        for index in range(count):
            image = pipe(prompt, height=resolution, width=resolution, num_inference_steps=steps,
                         generator=generator).images[0]
            image.save(staging / f"{index:05d}.png")
        (staging / "done.json").write_text(json.dumps({"prompt": prompt, "count": count, "resolution": resolution}))
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "done.json").is_file():  # not just another run finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(str(p) for p in target.glob("*.png"))[:count]


def materialize_tiny_sd(target: Path) -> None:
    """A tiny Stable Diffusion (random weights, 32x32 images) with an offline tokenizer: the path, offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from peft_core.presets import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2"))
    tokenizer.model_max_length = 77
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights everywhere, so adapters travel
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, projection_dim=32))
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=16,
                            sample_size=32)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=16, attention_head_dim=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    tokenizer.save_pretrained(target / "tokenizer")
    text_encoder.save_pretrained(target / "text_encoder")
    vae.save_pretrained(target / "vae")
    unet.save_pretrained(target / "unet")
    scheduler.save_pretrained(target / "scheduler")
    (target / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", type(tokenizer).__name__], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
