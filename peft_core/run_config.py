"""The run config: one typed description of a training run, the same from the UI and the CLI.

It is what ``config.yaml`` in a run directory holds, so a UI run can be
reproduced with ``python -m peft_core train runs/x/config.yaml``. Every field
has ``help`` text (forms are built from it) and bad values are refused here,
before any model is touched. Secrets (a Hub token) never belong in it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from peft_core.config import PeftConfig, TaskType, config_field
from peft_core.config_errors import ConfigError, bad, positive_int
from peft_core.errors import RunError

TASK_TYPES = {
    "causal_lm": TaskType.CAUSAL_LM,
    "seq2seq": TaskType.SEQ_2_SEQ_LM,
    "seq_cls": TaskType.SEQ_CLS,
    "token_cls": TaskType.TOKEN_CLS,
    "image_cls": TaskType.IMAGE_CLS,
    "dreambooth": None,
}
QUANTIZATIONS = ("none", "4bit", "8bit")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw", "adamw_8bit")
DREAMBOOTH_METHODS = ("lora", "loha", "lokr")  # what wraps a UNet's convolutions and attention


def methods_for_task(task: str) -> list:
    """The registered methods (``MethodSpec``) that can train ``task``."""
    from peft_core.registry import list_methods

    if task == "dreambooth":
        return [spec for spec in list_methods() if spec.name in DREAMBOOTH_METHODS]
    return list_methods(TASK_TYPES[task])


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    positive_int(name, value)


def _number_in(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise bad("number_range_open" if low_open else "number_range", name, value, low=f"{low:g}", high=f"{high:g}")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise bad("one_of", name, value, choices=", ".join(choices))


@dataclass
class ModelSettings:
    name_or_path: str = config_field("smollm2-135m-instruct", help="A preset, a Hub id or a local folder.")
    quantization: str = config_field(
        "none", help="Load the base weights in 4-bit (QLoRA) or 8-bit to save memory.", choices=QUANTIZATIONS
    )
    gradient_checkpointing: bool = config_field(
        False, help="Recompute activations in the backward pass: much less memory, about 30% slower."
    )
    trust_remote_code: bool = config_field(
        False, help="Run code shipped with the model. Only for models you trust.", ui=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ConfigError("empty_model")
        _choice("model.quantization", self.quantization, QUANTIZATIONS)


@dataclass
class DataSettings:
    train: str = config_field("", help="The training file (or folder / ZIP of images).")
    eval: str | None = config_field(None, help="An evaluation file; empty: split eval_fraction off the training data.")
    format: str = config_field("auto", help="The data format; auto detects it from the columns.")
    columns: dict[str, str] = config_field({}, help="Map the format's column names to your file's.", ui=False)
    max_length: int = config_field(512, help="Longest example in tokens; longer ones are cut (the report counts them).")
    padding_free: bool = config_field(
        True, help="Put each batch's examples end to end in rows of about max_length tokens: no compute on padding, "
        "the same steps and loss."
    )
    packing: bool = config_field(
        False, help="Pack the whole set into rows of max_length tokens: fewer, fuller steps per epoch."
    )
    eval_fraction: float = config_field(0.1, help="Share of the training rows held out for evaluation when no eval file.")

    def __post_init__(self) -> None:
        _positive_int("data.max_length", self.max_length)
        _number_in("data.eval_fraction", self.eval_fraction, 0.0, 0.5)


@dataclass
class TrainingSettings:
    output_dir: str = config_field("runs/run", help="The run directory: config, events, checkpoints, adapter.")
    max_steps: int | None = config_field(100, help="Optimizer steps to train (empty: use num_epochs).")
    num_epochs: float | None = config_field(None, help="Passes over the data, when max_steps is empty.")
    batch_size: int = config_field(4, help="Examples per step on each device.")
    gradient_accumulation_steps: int = config_field(1, help="Batches summed into one optimizer step.")
    learning_rate: float = config_field(2e-4, help="Peak learning rate (1e-4 to 5e-4 for LoRA; higher for prompts).")
    lr_scheduler: str = config_field("linear", help="How the learning rate changes.", choices=SCHEDULERS)
    warmup_steps: int = config_field(0, help="Steps of linear warm-up from zero.")
    weight_decay: float = config_field(0.0, help="AdamW weight decay.")
    max_grad_norm: float | None = config_field(1.0, help="Clip gradients to this norm (empty: no clipping).")
    optimizer: str = config_field("adamw", help="adamw, or adamw_8bit (bitsandbytes) to save memory.", choices=OPTIMIZERS)
    precision: str = config_field(
        "auto", help="auto: fp32 on CPU, bf16 on GPUs that have it natively, else fp16.", choices=PRECISIONS
    )
    seed: int = config_field(0, help="Random seed: same seed and data, same run.")
    logging_steps: int = config_field(1, help="Record loss and speed every N steps.")
    eval_steps: int | None = config_field(50, help="Evaluate every N steps (empty: only at the end).")
    save_steps: int | None = config_field(50, help="Write a checkpoint every N steps (empty: only at the end).")
    keep_checkpoints: int = config_field(3, help="How many recent checkpoints to keep (the best one is always kept).")
    early_stopping_patience: int | None = config_field(
        None, help="Stop after this many evaluations without a better eval loss (empty: never)."
    )
    resume_from: str | None = config_field(None, help="A checkpoint folder to continue from, or 'latest'.", ui=False)

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise ConfigError("empty_output_dir")
        _positive_int("training.max_steps", self.max_steps, allow_none=True)
        if self.max_steps is None:
            if self.num_epochs is None:
                raise ConfigError("steps_or_epochs")
            _number_in("training.num_epochs", self.num_epochs, 0.0, 1000.0, low_open=True)
        _positive_int("training.batch_size", self.batch_size)
        _positive_int("training.gradient_accumulation_steps", self.gradient_accumulation_steps)
        _number_in("training.learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _choice("training.lr_scheduler", self.lr_scheduler, SCHEDULERS)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("steps_at_least", "training.warmup_steps", self.warmup_steps, low=0)
        _number_in("training.weight_decay", self.weight_decay, 0.0, 1.0)
        if self.max_grad_norm is not None:
            _number_in("training.max_grad_norm", self.max_grad_norm, 0.0, 1e6, low_open=True)
        _choice("training.optimizer", self.optimizer, OPTIMIZERS)
        _choice("training.precision", self.precision, PRECISIONS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("whole_number", "training.seed", self.seed)
        for name in ("logging_steps", "keep_checkpoints"):
            _positive_int(f"training.{name}", getattr(self, name))
        for name in ("eval_steps", "save_steps", "early_stopping_patience"):
            _positive_int(f"training.{name}", getattr(self, name), allow_none=True)


@dataclass
class DreamBoothSettings:
    """What only a DreamBooth run uses (task: dreambooth); the UNet's adapter is the run's method."""

    instance_prompt: str = config_field("a photo of sks dog", help="The prompt for your images, with a rare token.")
    class_prompt: str = config_field("a photo of dog", help="The same prompt without the token, for prior preservation.")
    with_prior_preservation: bool = config_field(
        True, help="Also train on images the base model makes of the class, so it keeps knowing the class."
    )
    num_class_images: int = config_field(50, help="How many class images to make (once; they are cached).")
    prior_loss_weight: float = config_field(1.0, help="Weight of the class images' loss.")
    class_inference_steps: int = config_field(25, help="Sampling steps for each class image.")
    resolution: int = config_field(512, help="Training images are resized and cropped to this size.")
    center_crop: bool = config_field(True, help="Crop at the centre; off: a random crop each time.")
    skip_bad_images: bool = config_field(
        False, help="Leave out unreadable or too small images (the report names them) instead of stopping."
    )
    train_text_encoder: bool = config_field(False, help="Also train a LoRA on the text encoder.")
    text_encoder_r: int = config_field(8, help="Rank of the text encoder's LoRA.")
    text_encoder_alpha: float = config_field(8.0, help="Alpha of the text encoder's LoRA.")
    noise_offset: float = config_field(0.0, help="Noise offset (0.05-0.1 helps very dark or bright images).")
    snr_gamma: float | None = config_field(None, help="Min-SNR loss weighting (5.0 is usual); empty: off.")
    validation_prompts: list[str] = config_field([], help="Prompts for the sample images (empty: the instance prompt).")
    validation_steps: int | None = config_field(100, help="Make sample images every N steps (and at step 0).")
    validation_inference_steps: int = config_field(25, help="Sampling steps for each sample image.")
    guidance_scale: float = config_field(7.5, help="Classifier-free guidance of the sample images.")

    def __post_init__(self) -> None:
        if not isinstance(self.instance_prompt, str) or not self.instance_prompt.strip():
            raise ConfigError("empty_instance_prompt")
        if self.with_prior_preservation and not (isinstance(self.class_prompt, str) and self.class_prompt.strip()):
            raise ConfigError("empty_class_prompt")
        for name in ("num_class_images", "class_inference_steps", "resolution", "text_encoder_r",
                     "validation_inference_steps"):
            _positive_int(f"dreambooth.{name}", getattr(self, name))
        _positive_int("dreambooth.validation_steps", self.validation_steps, allow_none=True)
        if self.resolution % 8:
            raise bad("multiple_of_8", "dreambooth.resolution", self.resolution)
        _number_in("dreambooth.prior_loss_weight", self.prior_loss_weight, 0.0, 100.0)
        _number_in("dreambooth.text_encoder_alpha", self.text_encoder_alpha, 0.0, 1e4, low_open=True)
        _number_in("dreambooth.noise_offset", self.noise_offset, 0.0, 1.0)
        if self.snr_gamma is not None:
            _number_in("dreambooth.snr_gamma", self.snr_gamma, 0.0, 100.0, low_open=True)
        _number_in("dreambooth.guidance_scale", self.guidance_scale, 0.0, 50.0)
        if not isinstance(self.validation_prompts, list) or not all(isinstance(p, str) for p in self.validation_prompts):
            raise ConfigError("validation_prompts")


@dataclass
class RunConfig:
    """A whole run: task, model, method (the method's own config fields), data, training."""

    task: str = "causal_lm"
    model: ModelSettings = field(default_factory=ModelSettings)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "lora"})
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dreambooth: DreamBoothSettings = field(default_factory=DreamBoothSettings)

    def __post_init__(self) -> None:
        _choice("task", self.task, tuple(TASK_TYPES))
        if not isinstance(self.method, dict) or not self.method.get("name"):
            raise ConfigError("method_needs_name")
        self.method_config()  # validate the method's fields now, with their own messages

    @property
    def task_type(self) -> TaskType | None:
        return TASK_TYPES[self.task]

    def method_config(self) -> PeftConfig:
        """The method's typed config (validated), for this run's task."""
        from peft_core.registry import get_method

        settings = dict(self.method)
        spec = get_method(settings.pop("name"))
        fits = (spec.name in DREAMBOOTH_METHODS) if self.task == "dreambooth" else self.task_type in spec.tasks
        if not fits:
            raise RunError("method_task_mismatch", method=spec.name, task=self.task,
                           methods=", ".join(s.name for s in methods_for_task(self.task)))
        known = {f.name for f in dataclasses.fields(spec.config_cls) if f.init and f.name != "extra_keys"}
        unknown = sorted(set(settings) - known)
        if unknown:
            hidden = {"task_type", "base_model_name_or_path", "revision", "inference_mode"}
            raise ConfigError("unknown_method_setting", method=spec.name, names=", ".join(map(repr, unknown)),
                              known=", ".join(sorted(known - hidden)))
        settings.setdefault("task_type", self.task_type)
        if "total_step" in known and settings.get("total_step") is None and self.training.max_steps:
            settings["total_step"] = self.training.max_steps  # a schedule over the whole run (AdaLoRA)
        return spec.config_cls(**settings)

    # -- YAML ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": dataclasses.asdict(self.model),
            "method": dict(self.method),
            "data": dataclasses.asdict(self.data),
            "training": dataclasses.asdict(self.training),
            **({"dreambooth": dataclasses.asdict(self.dreambooth)} if self.task == "dreambooth" else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("not_sections", kind=type(data).__name__)
        sections = {"model": ModelSettings, "data": DataSettings, "training": TrainingSettings,
                    "dreambooth": DreamBoothSettings}
        unknown = sorted(set(data) - set(sections) - {"task", "method"})
        if unknown:
            raise ConfigError("unknown_sections", names=", ".join(unknown))
        kwargs: dict[str, Any] = {"task": data.get("task", "causal_lm"), "method": dict(data.get("method") or {"name": "lora"})}
        for name, section_cls in sections.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise bad("section_not_mapping", name, values)
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError("unknown_setting", name=name, names=", ".join(map(repr, unknown)),
                                  known=", ".join(sorted(known)))
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RunConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError("bad_yaml", path=str(path), reason=str(exc)) from None
        return cls.from_dict(data or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save_yaml(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.to_yaml())
        os.replace(tmp, path)

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """Apply ``section.key=value`` overrides (values parsed as YAML), e.g. training.max_steps=10."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            parts = key.strip().split(".")
            if not sep or len(parts) > 2 or not parts[0]:
                raise ConfigError("bad_override", item=repr(item))
            value = yaml.safe_load(raw)
            if len(parts) == 1:
                data[parts[0]] = value
            else:
                data.setdefault(parts[0], {})[parts[1]] = value
        return RunConfig.from_dict(data)
