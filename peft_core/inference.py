"""Generating images with a Stable Diffusion base model plus a DreamBooth adapter.

``DiffusionInference(base, adapter)`` loads the base pipeline's parts and the
adapter written by a DreamBooth run (``unet/`` and, if trained,
``text_encoder/``; a folder that is itself one UNet adapter works too, as does
a UNet adapter saved by the PEFT library). ``generate`` is seeded, so the same
seed gives the same image; ``merge`` folds the LoRA into the weights (no extra
work per step, no way back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from peft_core.config import CONFIG_NAME


class DiffusionInference:
    def __init__(self, base: str, adapter: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        from peft_core.diffusion import load_components
        from peft_core.peft_model import PeftModel

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.components = load_components(base, dtype, self.device)
        self.adapters: dict[str, PeftModel] = {}
        self.merged = False
        if adapter is not None:
            for name, folder in adapter_folders(Path(adapter)).items():
                module = getattr(self.components, name)
                # the layers are injected into the pipeline's own module; keep the wrapper for merging
                self.adapters[name] = PeftModel.from_pretrained(module, folder).to(self.device, dtype)
        self.pipe = self.components.pipeline()
        self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def generate(self, prompt: str | list[str], seed: int = 0, num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                 negative_prompt: str | None = None, num_images: int = 1) -> list[Any]:
        """PIL images; the generator is seeded on the CPU, so a seed gives the same image on any device."""
        generator = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         height=height, width=width, negative_prompt=negative_prompt,
                         num_images_per_prompt=num_images, generator=generator).images

    def merge(self) -> None:
        """Fold the adapters into the UNet and text encoder weights (faster sampling; cannot be undone)."""
        for model in self.adapters.values():
            model.merge_and_unload()
        self.merged = True


def adapter_folders(path: Path) -> dict[str, Path]:
    """unet/ and text_encoder/ of a DreamBooth output, or the folder itself as a UNet adapter."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; give the run folder (or a checkpoint) of a DreamBooth run")
    found = {name: path / name for name in ("unet", "text_encoder") if (path / name / CONFIG_NAME).is_file()}
    if not found and (path / CONFIG_NAME).is_file():
        found = {"unet": path}
    if not found:
        raise ValueError(f"{path} holds no adapter: expected unet/{CONFIG_NAME} (a DreamBooth run) or {CONFIG_NAME}")
    return found
