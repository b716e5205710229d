"""Base model versus adapter on the same input: the engine of the Test tab.

``AdapterTester`` loads one base model once and any number of adapters onto
it. ``compare`` answers an input twice with the same seed: once with every
adapter switched off (which is exactly the base model, so no second copy of
the weights is loaded) and once with the active adapter. What an answer is
depends on the task: generated text, the top labels with their
probabilities, a tag per word, or images.

    tester = AdapterTester.for_run("runs/my-run")
    result = tester.compare("What is the capital of France?", max_new_tokens=32)
    result.base, result.adapted
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from peft_core.adapter_sources import (
    adapter_name,
    base_labels,
    check_base_model,
    check_task,
    diffusion_folders,
    find_labels,
    open_image,
    read_config,
    run_config_file,
    same_base,  # noqa: F401 (it was defined here; still importable from here)
)
from peft_core.config import PeftConfig, config_field
from peft_core.peft_model import PeftModel
from peft_core.run_config import TASK_TYPES, ModelSettings, RunConfig
from peft_core.training.precision import pick_device, pick_precision

logger = logging.getLogger(__name__)

TOP_K = 5  # labels shown for a classifier's answer
HEAD_SEED = 0  # a classifier's new head starts random; seeded, the base side is the same every time
CLASSIFIERS = ("seq_cls", "token_cls", "image_cls")


@dataclass
class Comparison:
    """One input answered by the base model and by an adapter (same seed)."""

    base: Any  # the base model's answer, adapters switched off
    adapted: Any  # the answer with adapter ``adapter`` on
    adapter: str
    task: str
    seed: int
    notes: list[str] = field(default_factory=list)  # what the user should know when reading the answers


@dataclass(frozen=True)
class CompareOptions:
    """How to answer; each task reads the options it has a use for."""

    max_new_tokens: int = config_field(64, help="Longest generated answer in tokens (text generation).")
    temperature: float = config_field(0.0, help="0: greedy (always the likeliest token); higher: more varied samples.")
    top_p: float = config_field(1.0, help="Sample only from the likeliest tokens whose probabilities add up to this.")
    use_chat_template: bool = config_field(
        True, help="Send the prompt as one user message through the tokenizer's chat template (causal LM); "
        "without a template, in the '### Instruction' layout that instruction data trains in."
    )
    num_images: int = config_field(1, help="Images per side (DreamBooth).")
    steps: int = config_field(25, help="Sampling steps per image (DreamBooth).")
    guidance_scale: float = config_field(7.5, help="Classifier-free guidance (DreamBooth).")

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_images", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number; got {value!r}")
        if not _number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more; got {self.temperature!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be above 0 and at most 1; got {self.top_p!r}")
        if not _number(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be 0 or more; got {self.guidance_scale!r}")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> CompareOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"compare has no option {', '.join(map(repr, unknown))}; "
                             f"its options are: {', '.join(sorted(known))}")
        return cls(**options)


@dataclass
class _Adapter:
    """What the tester keeps about one loaded adapter."""

    labels: list[str] | None  # a classifier's label names, in head order
    notes: list[str]


class AdapterTester:
    """One base model and any number of adapters; the base and an adapter answer the same input."""

    def __init__(self, base: str, task: str, device: str | torch.device | None = None) -> None:
        from peft_core.models import check_model_name
        from peft_core.tasks import make_task

        if task not in TASK_TYPES:
            raise ValueError(f"task {task!r} is not one the tester knows; choose one of: {', '.join(TASK_TYPES)}")
        self.base = check_model_name(base)
        self.task = task
        self.device = torch.device(device) if device is not None else pick_device()
        self.precision = pick_precision("auto", self.device)
        self._task = make_task(RunConfig(task=task, model=ModelSettings(name_or_path=self.base)))
        self._adapters: dict[str, _Adapter] = {}
        self._active: str | None = None
        self._model: PeftModel | None = None  # text and image tasks: made with the first adapter
        self._diffusion: Any = None  # DreamBooth: the pipeline
        self._parts: dict[str, PeftModel] = {}  # DreamBooth: unet / text_encoder with their adapters
        self._lock = threading.RLock()  # UI sessions share a tester; switching adapters must not interleave
        if task == "dreambooth":
            from peft_core.inference import DiffusionInference

            self._diffusion = DiffusionInference(self.base, None, device=self.device)
            self._dtype = self._diffusion.components.unet.dtype
        else:
            self._task.load_processor()

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> AdapterTester:
        """A tester on the run's base model and task, with the run's adapter loaded (a checkpoint folder works too)."""
        folder = Path(run_dir).expanduser()
        config = RunConfig.from_yaml(run_config_file(folder))
        tester = cls(config.model.name_or_path, config.task, device=device)
        tester.load_adapter(folder)
        return tester

    # -- adapters -----------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def active_adapter(self) -> str | None:
        return self._active

    @property
    def labels(self) -> list[str] | None:
        """The active classifier's label names (None for other tasks, or before an adapter is loaded)."""
        return self._adapters[self._active].labels if self._active else None

    @property
    def notes(self) -> list[str]:
        """What loading the active adapter found worth telling the user (missing labels.json, ...)."""
        return list(self._adapters[self._active].notes) if self._active else []

    def load_adapter(self, source: str | os.PathLike, name: str | None = None, *, check_base: bool = True) -> str:
        """Load a run folder, an adapter folder or a Hub id, make it the active adapter and return its name.

        ``check_base=False`` accepts an adapter whose recorded base model has
        another name than this tester's (the same model under two names).
        """
        source = os.fspath(source).strip() if isinstance(source, (str, os.PathLike)) else source
        if not isinstance(source, str) or not source:
            raise ValueError("no adapter given; enter a run folder, an adapter folder or a Hub id")
        with self._lock:
            return self._load(source, name, check_base)

    def _load(self, source: str, name: str | None, check_base: bool) -> str:
        name = adapter_name(source, name, self._adapters)
        notes: list[str] = []
        if self.task == "dreambooth":
            self._attach_diffusion(source, name, check_base, notes)
            labels = None
        else:
            config = read_config(source)
            check_task(self.task, config, source, notes)
            check_base_model(self.base, config.base_model_name_or_path, source, check_base, notes)
            labels = find_labels(source, config, notes) if self.task in CLASSIFIERS else None
            self._attach(source, name, labels, config)
        self._adapters[name] = _Adapter(labels, list(dict.fromkeys(notes)))
        self.set_adapter(name)
        logger.info("loaded adapter %s from %s onto %s", name, source, self.base)
        return name

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the adapter that ``compare`` sets against the base."""
        if name not in self._adapters:
            raise ValueError(f"no adapter named {name!r}; loaded: {', '.join(self._adapters) or 'none yet'}")
        with self._lock:
            if self.task == "dreambooth":
                self._switch_parts(name)
            else:
                self._model.set_adapter(name)
            self._active = name

    def _attach(self, source: str, name: str, labels: list[str] | None, config: PeftConfig) -> None:
        """Put adapter ``name`` on the base model, loading the base with the first adapter."""
        if self._model is None:
            base = self._load_base(labels)
            try:
                self._model = PeftModel.from_pretrained(base, source, adapter_name=name).eval()
            except (ValueError, FileNotFoundError) as exc:
                raise ValueError(f"cannot load adapter {source}: {exc}") from None
            return
        present = self._model.peft_config[self._active]
        if config.peft_type is not present.peft_type:
            raise ValueError(f"{source} is a {config.peft_type.value} adapter, but the adapters loaded here are "
                             f"{present.peft_type.value}; methods cannot be mixed on one base model, so open "
                             f"another tester for it")
        if labels is not None and len(labels) != len(self._task.labels):
            raise ValueError(f"{source} classifies into {len(labels)} labels, but the adapters loaded here into "
                             f"{len(self._task.labels)}; open another tester for it")
        try:
            self._model.load_adapter(source, name)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"cannot load adapter {source}: {exc}") from None
        self._model.eval()

    def _attach_diffusion(self, source: str, name: str, check_base: bool, notes: list[str]) -> None:
        """Put a DreamBooth adapter (``unet/``, maybe ``text_encoder/``) on the pipeline's own modules."""
        for part, folder in diffusion_folders(source, self.base, check_base, notes).items():
            try:
                if part in self._parts:
                    self._parts[part].load_adapter(str(folder), name)
                else:  # injected into the pipeline's module itself; a failed load leaves layers that change nothing
                    module = getattr(self._diffusion.components, part)
                    self._parts[part] = PeftModel.from_pretrained(module, str(folder), adapter_name=name)
            except (ValueError, FileNotFoundError) as exc:
                self._forget_parts(name)
                raise ValueError(f"cannot load DreamBooth adapter {source}: {exc}") from None
            self._parts[part].to(self.device, self._dtype).eval()

    def _forget_parts(self, name: str) -> None:
        """Undo a DreamBooth adapter loaded into some parts before another part failed."""
        for part, model in list(self._parts.items()):
            if name in model.peft_config and len(model.peft_config) > 1:
                model.delete_adapter(name)
            elif name in model.peft_config:  # its only adapter: the pipeline's module as it was
                model.unload()
                del self._parts[part]

    def _switch_parts(self, name: str | None) -> None:
        """Adapter ``name`` on in each DreamBooth part that has it, off in the others (None: all off)."""
        for part in self._parts.values():
            if name in part.peft_config:
                part.set_adapter(name)
                part.enable_adapters()
            else:
                part.disable_adapters()

    def _load_base(self, labels: list[str] | None) -> torch.nn.Module:
        if self.task in CLASSIFIERS:
            self._task.labels = labels if labels is not None else base_labels(self.base)
        with seeded(HEAD_SEED, self.device):
            return self._task.load_model(self.precision, self.device).eval()

    # -- comparing ----------------------------------------------------------------------
    @torch.no_grad()
    def compare(self, inputs: Any, seed: int = 0, **options: Any) -> Comparison:
        """Answer ``inputs`` with the base model and with the active adapter, with the same seed.

        Options (see ``CompareOptions``): max_new_tokens, temperature, top_p,
        use_chat_template, num_images, steps, guidance_scale.
        """
        if self._active is None:
            raise ValueError("no adapter loaded; load a run folder, an adapter folder or a Hub id first")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be a whole number; got {seed!r}")  # noqa: TRY004 (a message for the user)
        settings = CompareOptions.parse(options)
        if self.task == "image_cls":
            inputs = open_image(inputs)
        elif not isinstance(inputs, str) or not inputs.strip():
            raise ValueError("the input is empty; type a prompt or text to compare")
        answer: Callable[[Any, int, CompareOptions], Any] = getattr(self, f"_answer_{self.task}")
        with self._lock:
            with self._adapters_off():
                base = answer(inputs, seed, settings)
            adapted = answer(inputs, seed, settings)
        notes = list(self._adapters[self._active].notes)
        if self.task in CLASSIFIERS:
            notes.append("the base side classifies with the base model's own head for these labels: new and "
                         "untrained unless the base model came with one, so its answer may be chance")
        return Comparison(base=base, adapted=adapted, adapter=self._active, task=self.task, seed=seed, notes=notes)

    @contextlib.contextmanager
    def _adapters_off(self) -> Iterator[None]:
        """Inside: every adapter off, i.e. exactly the base model."""
        if self.task == "dreambooth":
            self._switch_parts(None)
            try:
                yield
            finally:
                self._switch_parts(self._active)
        else:
            with self._model.disable_adapter():
                yield

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Half-precision base weights with fp32 adapter weights: the GPU's autocast, as in training."""
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def _encode(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        encoded = self._task.processor(*args, return_tensors="pt", **kwargs)
        return {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def _generate(self, inputs: dict[str, torch.Tensor], seed: int, o: CompareOptions) -> torch.Tensor:
        config = copy.deepcopy(self._model.get_base_model().generation_config)
        config.max_new_tokens = o.max_new_tokens
        config.pad_token_id = self._task.processor.pad_token_id
        config.do_sample = o.temperature > 0
        config.temperature, config.top_p = (o.temperature, o.top_p) if config.do_sample else (None, None)
        if not config.do_sample:
            config.top_k = None
        with seeded(seed, self.device), self._autocast():
            return self._model.generate(**inputs, generation_config=config)

    def _answer_causal_lm(self, prompt: str, seed: int, o: CompareOptions) -> str:
        from peft_core.tasks.causal_lm import PLAIN_TEMPLATE

        tokenizer = self._task.processor
        if o.use_chat_template and tokenizer.chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            inputs = self._encode(text, add_special_tokens=False)
        elif o.use_chat_template:  # the layout instruction data trains in without a template
            inputs = self._encode(PLAIN_TEMPLATE.format(prompt=prompt), add_special_tokens=False)
        else:
            inputs = self._encode(prompt)
        output = self._generate(inputs, seed, o)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _answer_seq2seq(self, text: str, seed: int, o: CompareOptions) -> str:
        output = self._generate(self._encode(text, truncation=True), seed, o)
        return self._task.processor.decode(output[0], skip_special_tokens=True)

    def _answer_seq_cls(self, text: str, seed: int, o: CompareOptions) -> list[tuple[str, float]]:
        with self._autocast():
            logits = self._model(**self._encode(text, truncation=True)).logits
        return self._top(logits[0])

    def _answer_token_cls(self, text: str, seed: int, o: CompareOptions) -> list[tuple[str, str]]:
        words = text.split()
        encoded = self._task.processor(words, is_split_into_words=True, truncation=True, return_tensors="pt")
        ids = encoded["input_ids"].to(self.device)
        with self._autocast():
            logits = self._model(input_ids=ids, attention_mask=encoded["attention_mask"].to(self.device)).logits
        predicted = logits[0, -ids.shape[1]:].argmax(-1).tolist()  # prompt methods put virtual tokens first
        tags: dict[int, str] = {}
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word not in tags:  # the first sub-token of a word speaks for it
                tags[word] = self._label_names()[predicted[position]]
        return [(words[i], tags[i]) for i in sorted(tags)]

    def _answer_image_cls(self, image: Any, seed: int, o: CompareOptions) -> list[tuple[str, float]]:
        pixels = self._task.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device)
        with self._autocast():
            logits = self._model(pixel_values=pixels).logits
        return self._top(logits[0])

    def _answer_dreambooth(self, prompt: str, seed: int, o: CompareOptions) -> list[Any]:
        return self._diffusion.generate(prompt, seed=seed, num_inference_steps=o.steps,
                                        guidance_scale=o.guidance_scale, num_images=o.num_images)

    def _label_names(self) -> list[str]:
        return self._adapters[self._active].labels or list(self._task.labels)

    def _top(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        probabilities = logits.float().softmax(-1)
        values, indices = probabilities.topk(min(TOP_K, probabilities.numel()))
        names = self._label_names()
        return [(names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]


# -- helpers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block and give the caller's random state back after it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
