"""DreamBooth: teach Stable Diffusion a subject from a few images, with LoRA (or LoHa / LoKr) on the UNet.

The instance images come from a folder or ZIP (a ``name.txt`` next to
``name.png`` is that image's own caption). With prior preservation, images of
the class made by the frozen base model (cached, see ``diffusion.class_images``)
share every batch with the instance images, and their loss is weighted by
``prior_loss_weight``. The UNet's adapter is the run's method; the text encoder
may get a LoRA of its own. Sample images for the validation prompts are made at
step 0 and every ``validation_steps`` with a fixed seed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from peft_core.data import load_instance_images
from peft_core.data.reasons import Reason
from peft_core.tasks.base import DataReport, Features, Task


def class_cache_dir() -> Path:
    """Where prior-preservation images are kept between runs (under the peft-studio cache folder)."""
    from peft_core.presets import cache_dir

    return cache_dir() / "class-images"


class DreamBoothTask(Task):
    name = "dreambooth"
    task_type = None
    auto_class = ""  # several models: see build_model

    def __init__(self, config) -> None:
        super().__init__(config)
        self.class_rows: list[Features] = []  # prior-preservation images, once build_model made them

    @property
    def settings(self):
        return self.config.dreambooth

    @property
    def sample_every(self) -> int | None:
        return self.settings.validation_steps

    def load_processor(self) -> Any:
        from transformers import AutoTokenizer

        from peft_core.models import check_model_name
        from peft_core.presets import resolve_model

        name = self.config.model.name_or_path
        source = resolve_model(check_model_name(name))
        not_a_pipeline = ValueError(f"{name!r} is not a Stable Diffusion pipeline (no model_index.json and "
                                    "tokenizer/); DreamBooth needs a diffusers folder or Hub id, e.g. tiny-sd-random")
        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "model_index.json")):
            raise not_a_pipeline
        try:
            self.processor = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        except (OSError, ValueError):
            raise not_a_pipeline from None
        return self.processor

    # -- data ----------------------------------------------------------------------
    def read(self) -> tuple[list[Any], list[Any] | None]:
        extract_to = os.path.join(self.config.training.output_dir, "data", "instance")
        skipped: list[str] = []
        paths = load_instance_images(self.config.data.train, extract_to, min_size=64,
                                     skip_bad=self.settings.skip_bad_images, skipped=skipped)
        examples = [{"path": path, "prompt": _caption(path) or self.settings.instance_prompt, "prior": False}
                    for path in paths]
        report = DataReport(source=Path(self.config.data.train).name, format="instance images",
                            rows=len(paths) + len(skipped), used=len(paths))
        for reason in skipped:
            report.dropped[reason] = report.dropped.get(reason, 0) + 1
        captions = sum(e["prompt"] != self.settings.instance_prompt for e in examples)
        report.notes.append(Reason("own_captions", captions=captions, images=len(examples)) if captions
                            else Reason("one_prompt", prompt=repr(self.settings.instance_prompt)))
        if len(examples) < 3 or len(examples) > 30:
            report.notes.append(Reason("image_count", images=len(examples)))
        self.report = report
        return examples, None

    def encode(self, example: Any) -> Features | None:
        return dict(example)

    def length(self, features: Features) -> int:
        return 1

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return [(os.path.basename(features["path"]) + "  ←  ", False), (features["prompt"], True)]

    def count_tokens(self, features: list[Features]) -> int:
        return len(features)  # images per second, for this task

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        rows = list(features)
        if self.class_rows:  # as many class images as instance images, drawn with torch's (checkpointed) generator
            picks = torch.randint(0, len(self.class_rows), (len(features),)).tolist()
            rows += [self.class_rows[i] for i in picks]
        pixels = torch.stack([self._pixels(row["path"]) for row in rows])
        ids = self.processor([row["prompt"] for row in rows], padding="max_length", truncation=True,
                             max_length=self.processor.model_max_length, return_tensors="pt").input_ids
        return {"pixel_values": pixels, "input_ids": ids, "prior": torch.tensor([row["prior"] for row in rows])}

    def _pixels(self, path: str) -> torch.Tensor:
        size = self.settings.resolution
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        if self.settings.center_crop:
            left, top = (image.width - size) // 2, (image.height - size) // 2
        else:  # from torch's generator, whose state a checkpoint keeps
            left = int(torch.randint(0, image.width - size + 1, ()))
            top = int(torch.randint(0, image.height - size + 1, ()))
        image = image.crop((left, top, left + size, top + size))
        tensor = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
        return tensor.permute(2, 0, 1).float() / 127.5 - 1.0

    # -- model -------------------------------------------------------------------------
    def build_model(self, precision: str, device: torch.device) -> nn.Module:
        from peft_core.diffusion import class_images, load_components
        from peft_core.models import weights_dtype

        components = load_components(self.config.model.name_or_path, weights_dtype(precision, device), device)
        settings = self.settings
        if settings.with_prior_preservation:
            paths = class_images(components, settings.class_prompt, settings.num_class_images, settings.resolution,
                                 self.config.training.seed, settings.class_inference_steps, class_cache_dir())
            self.class_rows = [{"path": p, "prompt": settings.class_prompt, "prior": True} for p in paths]
        return DreamBoothModel(components, self.config)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        per_example = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"])
        prior = batch["prior"].to(per_example.device)
        weights = torch.where(prior, torch.full_like(per_example, self.settings.prior_loss_weight),
                              torch.ones_like(per_example))
        return (per_example * weights).sum() / max(total_items, 1)

    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((~batch["prior"]).sum())  # the instance images; the prior part is weighed on top

    # -- samples ---------------------------------------------------------------------------
    def sample(self, model: nn.Module, step: int, run_dir: str) -> tuple[list[str], list[str]]:
        """Images for the validation prompts (same seed every time); paths relative to the run folder."""
        settings = self.settings
        prompts = settings.validation_prompts or [settings.instance_prompt]
        pipe = model.components.pipeline()
        pipe.set_progress_bar_config(disable=True)
        folder = Path(run_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for index, prompt in enumerate(prompts):
                generator = torch.Generator("cpu").manual_seed(self.config.training.seed + index)
                image = pipe(prompt, height=settings.resolution, width=settings.resolution, generator=generator,
                             num_inference_steps=settings.validation_inference_steps,
                             guidance_scale=settings.guidance_scale).images[0]
                name = f"step-{step:06d}-{index}.png"
                image.save(folder / name)
                paths.append(f"samples/{name}")
        model.train(was_training)
        return paths, prompts


def _caption(image_path: str) -> str | None:
    text = Path(image_path).with_suffix(".txt")
    if text.is_file():
        caption = text.read_text(encoding="utf-8", errors="replace").strip()
        return caption or None
    return None


class DreamBoothModel(nn.Module):
    """The UNet (and maybe the text encoder) with adapters, the frozen VAE, and the noise schedule.

    ``forward`` returns each example's loss (so DDP sees one forward); the
    trainer's hooks (``base_model.regularization_loss``, ``on_optimizer_step``,
    ``save_pretrained``) reach both adapters.
    """

    def __init__(self, components, config) -> None:
        from peft_core import LoraConfig, get_peft_model
        from peft_core.presets import base_model_id

        super().__init__()
        self.components = components
        self.settings = config.dreambooth
        self.base_id = base_model_id(config.model.name_or_path)  # what the adapters record as their base
        self.scheduler = components.noise_scheduler()
        self.vae = components.vae
        self.unet = get_peft_model(components.unet, config.method_config())
        # the adapter layers are injected into components.unet itself: its pipeline samples with them
        self.text_encoder = None
        if self.settings.train_text_encoder:
            text_config = LoraConfig(r=self.settings.text_encoder_r, lora_alpha=self.settings.text_encoder_alpha,
                                     target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
            self.text_encoder = get_peft_model(components.text_encoder, text_config)
        if config.model.gradient_checkpointing:
            components.unet.enable_gradient_checkpointing()
            if self.text_encoder is not None:
                components.text_encoder.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
        self._frozen_text = components.text_encoder if self.text_encoder is None else None

    def adapters(self) -> dict[str, nn.Module]:
        return {name: model for name, model in (("unet", self.unet), ("text_encoder", self.text_encoder)) if model}

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        with torch.no_grad():
            latents = vae.encode(pixel_values.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        if self.settings.noise_offset:
            noise = noise + self.settings.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1,
                                                                     device=latents.device, dtype=latents.dtype)
        steps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        if self.text_encoder is not None:
            hidden = self.text_encoder(input_ids=input_ids)[0]
        else:
            with torch.no_grad():
                hidden = self._frozen_text(input_ids=input_ids)[0]
        predicted = self.unet(noisy, steps, encoder_hidden_states=hidden).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, steps)
        else:
            target = noise
        per_example = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.settings.snr_gamma is not None:
            per_example = per_example * self._snr_weights(steps)
        return per_example

    def _snr_weights(self, steps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma: min(SNR, gamma) / SNR (over SNR + 1 for v-prediction)."""
        alphas = self.scheduler.alphas_cumprod.to(steps.device)[steps]
        snr = alphas / (1 - alphas)
        clipped = torch.clamp(snr, max=self.settings.snr_gamma)
        divisor = snr + 1 if self.scheduler.config.prediction_type == "v_prediction" else snr
        return clipped / divisor

    # -- what the trainer calls --------------------------------------------------------
    @property
    def base_model(self) -> _Adapters:
        return _Adapters(self.adapters())

    def on_optimizer_step(self, step: int) -> None:
        for model in self.adapters().values():
            model.on_optimizer_step(step)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``unet/`` and ``text_encoder/`` as PEFT adapters, and ``pytorch_lora_weights.safetensors`` for diffusers."""
        from peft_core.diffusion import write_diffusers_lora

        for name, model in self.adapters().items():
            config = model.peft_config[model.active_adapter]
            if config.base_model_name_or_path is None:
                model.peft_config[model.active_adapter] = dataclasses.replace(config, base_model_name_or_path=self.base_id)
            model.save_pretrained(os.path.join(directory, name))
        write_diffusers_lora(directory, self.unet, self.text_encoder)


@dataclasses.dataclass
class _Adapters:
    """The adapters of both models, seen as one for the trainer's hooks."""

    models: dict[str, nn.Module]

    def regularization_loss(self) -> torch.Tensor | None:
        losses = [loss for m in self.models.values() if (loss := m.base_model.regularization_loss()) is not None]
        return sum(losses) if losses else None

    def training_state(self) -> dict[str, Any]:
        return {name: m.base_model.training_state() for name, m in self.models.items()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        for name, m in self.models.items():
            m.base_model.load_training_state(state.get(name, {}))
