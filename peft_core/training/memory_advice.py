"""What to change when a run does not fit: each change with its own estimate, and advice after an OOM.

``fits`` and ``suggest_changes`` try one setting at a time (gradient
checkpointing, 8-bit AdamW, 4-bit weights, a smaller batch with accumulation,
shorter rows) on the estimate of ``memory.estimate_memory`` and keep those that
bring it under what is available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peft_core.phrases import Phrase
from peft_core.training.memory import MemoryEstimate, ModelFacts, _estimate, estimate_memory

# The English of every line of advice, by code (the Studio translates ``advice.<code>``).
ADVICE: dict[str, str] = {
    "needs": "needs about {need} GB, {available} GB available",
    "with_estimate": "{change}: ~{gb} GB",
    "gradient_checkpointing": "turn on gradient checkpointing (slower steps, same results)",
    "adamw_8bit": "use 8-bit AdamW",
    "weights_4bit": "load the base model in 4-bit (QLoRA)",
    "too_big": (
        "even with gradient checkpointing, 4-bit weights, 8-bit AdamW, batch size 1 and 128 tokens this needs"
        " ~{floor} GB, more than the {available} GB available: pick a smaller model or a bigger device"
    ),
    "shorten_to": "shorten the maximum length to {length} tokens (longer texts are cut)",
    "all_of": "all of: {steps}",
    "keep_batch": "keep batch size {batch}",
    "smaller_batch_same": "batch size {batch} with gradient accumulation x{accumulate} (same effective batch {old})",
    "smaller_batch": "batch size {batch} with gradient accumulation x{accumulate} (effective batch {effective})",
    "oom_estimated": "training needed more than the {available} GB available (estimated {estimated} GB)",
    "oom_try": "training ran out of memory; try, one at a time:",
    "shorten_now": "shorten the maximum length (now {length} tokens)",
}


class Advice(Phrase):
    """A line of memory advice: English text with a code and params."""

    prefix = "advice"
    messages = ADVICE


# -- will it fit? ------------------------------------------------------------------------


@dataclass
class Suggestion:
    """A change to the run's settings and what the estimate says with it."""

    text: Advice
    change: dict[str, Any]  # estimate_memory keyword arguments to change
    total_gb: float

    def advice(self) -> Advice:
        """The change with its estimate, as the advice shows it."""
        return Advice("with_estimate", change=self.text, gb=f"{self.total_gb:.1f}")

    def __str__(self) -> str:
        return str.__str__(self.advice())


# Switches that save memory without touching the data, and their keyword arguments.
_SWITCHES = (
    (Advice("gradient_checkpointing"), {"gradient_checkpointing": True}),
    (Advice("adamw_8bit"), {"optimizer": "adamw_8bit"}),
    (Advice("weights_4bit"), {"weight_bits": 4}),
)


def fits(estimate: MemoryEstimate, available_gb: float) -> tuple[bool, list[Advice]]:
    """(True, []) if the estimate fits in ``available_gb``; else (False, changes that would fit).

    Each change comes with its new estimate; see ``suggest_changes``.
    """
    if estimate.total_gb <= available_gb:
        return True, []
    if estimate.facts is None:
        return False, [Advice("needs", need=f"{estimate.total_gb:.1f}", available=f"{available_gb:.1f}")]
    advice = [s.advice() for s in suggest_changes(estimate, available_gb)]
    return False, advice or [_too_big(estimate, available_gb)]


def _too_big(estimate: MemoryEstimate, available_gb: float) -> Advice:
    smallest = {k: v for _, change in _SWITCHES for k, v in change.items()}
    smallest.update(batch_size=1, seq_len=min(estimate.settings["seq_len"], 128))
    floor = _estimate(estimate.facts, {**estimate.settings, **smallest}).total_gb
    return Advice("too_big", floor=f"{floor:.1f}", available=f"{available_gb:.1f}")


def suggest_changes(estimate: MemoryEstimate, available_gb: float) -> list[Suggestion]:
    """Single changes whose re-estimate fits; if none does, all switches together with a smaller batch.

    Empty when even that does not fit (``fits`` then says to pick a smaller model).
    """
    facts, settings = estimate.facts, estimate.settings
    if facts is None:
        raise ValueError("this estimate does not remember its inputs; make it with estimate_memory()")
    switches = [(t, c) for t, c in _SWITCHES if any(settings[k] != v for k, v in c.items())]
    found = [_suggestion(facts, settings, text, change) for text, change in switches]
    batch = _largest_fitting(facts, settings, "batch_size", available_gb)
    if batch is not None:
        found.append(_suggestion(facts, settings, _batch_text(settings["batch_size"], batch), {"batch_size": batch}))
    length = None if facts.fixed_seq_len else _largest_fitting(facts, settings, "seq_len", available_gb, floor=16)
    if length is not None:
        text = Advice("shorten_to", length=length)
        found.append(_suggestion(facts, settings, text, {"seq_len": length}))
    found = [s for s in found if s.total_gb <= available_gb]
    if found or not switches:
        return found
    combined = {k: v for _, change in switches for k, v in change.items()}
    start = {**settings, **combined, "batch_size": 2 * settings["batch_size"]}
    batch = _largest_fitting(facts, start, "batch_size", available_gb)
    if batch is None:
        return []
    steps = [text for text, _ in switches] + [_batch_text(settings["batch_size"], batch)]
    return [_suggestion(facts, settings, Advice("all_of", steps=steps), {**combined, "batch_size": batch})]


def _suggestion(facts: ModelFacts, settings: dict[str, Any], text: Advice, change: dict[str, Any]) -> Suggestion:
    return Suggestion(text, change, _estimate(facts, {**settings, **change}).total_gb)


def _batch_text(old: int, new: int) -> Advice:
    if new == old:
        return Advice("keep_batch", batch=old)
    accumulate = -(-old // new)
    if new * accumulate == old:
        return Advice("smaller_batch_same", batch=new, accumulate=accumulate, old=old)
    return Advice("smaller_batch", batch=new, accumulate=accumulate, effective=new * accumulate)


def _largest_fitting(
    facts: ModelFacts, settings: dict[str, Any], key: str, available_gb: float, floor: int = 1
) -> int | None:
    """The largest of settings[key]/2, /4, ... (not below ``floor``) whose estimate fits."""
    value = settings[key] // 2
    while value >= floor:
        if _estimate(facts, {**settings, key: value}).total_gb <= available_gb:
            return value
        value //= 2
    return None


def oom_advice(estimate_kwargs: dict[str, Any], available_gb: float) -> list[Advice]:
    """What to change after a run ran out of memory.

    ``estimate_kwargs`` are estimate_memory's keyword arguments; with
    ``model`` and ``trainable_params`` among them each change comes with its
    estimate, aiming at 80% of the smaller of the estimate and the memory
    available (the run did not fit, whatever the estimate said). Without them
    the advice is the same changes, unnumbered.
    """
    kwargs = dict(estimate_kwargs)
    if "model" not in kwargs or "trainable_params" not in kwargs:
        return _plain_advice(kwargs)
    estimate = estimate_memory(kwargs.pop("model"), kwargs.pop("trainable_params"), **kwargs)
    target = 0.8 * min(available_gb, estimate.total_gb)
    summary = Advice("oom_estimated", available=f"{available_gb:.1f}", estimated=f"{estimate.total_gb:.1f}")
    advice = [s.advice() for s in suggest_changes(estimate, target)]
    return [summary, *(advice or [_too_big(estimate, target)])]


def _plain_advice(settings: dict[str, Any]) -> list[Advice]:
    defaults = {"gradient_checkpointing": False, "optimizer": "adamw", "weight_bits": 32}
    current = {**defaults, **settings}
    advice = [text for text, change in _SWITCHES if any(current[k] != v for k, v in change.items())]
    if current.get("batch_size", 1) > 1:
        advice.append(_batch_text(current["batch_size"], current["batch_size"] // 2))
    advice.append(Advice("shorten_now", length=current.get("seq_len", "?")))
    return [Advice("oom_try"), *advice]
