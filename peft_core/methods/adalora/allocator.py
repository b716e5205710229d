"""The rank budget of one AdaLoRA adapter: importance scores and the cubic schedule.

Each singular triplet (row of ``A``, value in ``E``, column of ``B``) gets an
importance score from the smoothed sensitivity ``|w * grad|`` of its weights
times that sensitivity's smoothed uncertainty. The budget (kept triplets over
all layers) stays at ``init_r`` per layer for ``tinit`` steps, falls on a
cubic curve to ``target_r`` per layer at ``total_step - tfinal``, and is then
frozen. Every ``deltaT`` steps the triplets scoring at or below the budget's
threshold get their singular value set to zero; a zeroed triplet may grow
back and win its place again at the next allocation, until the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peft_core.methods.adalora.config import AdaLoraConfig
from peft_core.methods.adalora.layer import AdaLoraLinear

logger = logging.getLogger(__name__)

Layers = Sequence[tuple[str, AdaLoraLinear]]  # (module path, layer) holding the adapter
FACTORS = ("lora_A", "lora_E", "lora_B")


@dataclass
class _Smoothed:
    """Moving averages for one tensor: sensitivity and its uncertainty, elementwise."""

    sensitivity: torch.Tensor
    uncertainty: torch.Tensor


class RankAllocator:
    """Decides, step by step, which singular triplets of one adapter stay."""

    def __init__(self, adapter_name: str, config: AdaLoraConfig, layers: Layers) -> None:
        self.adapter_name = adapter_name
        self.config = config
        self.init_budget = sum(layer.rank(adapter_name) for _, layer in layers)
        self.target_budget = config.target_r * len(layers)
        self.scores: dict[tuple[str, str], _Smoothed] = {}
        self.final_keep: dict[str, torch.Tensor] | None = None  # set once the schedule has ended

    @property
    def end_step(self) -> int:
        """The step of the last allocation; ranks are fixed after it."""
        return self.config.total_step - self.config.tfinal

    def budget_at(self, step: int) -> tuple[int, bool]:
        """``(triplets to keep over all layers, whether to re-allocate now)`` at ``step``."""
        tinit, end = self.config.tinit, self.end_step
        if step <= tinit:
            return self.init_budget, False
        if step > end:
            return self.target_budget, True
        remaining = 1 - (step - tinit) / (end - tinit)
        budget = int((self.init_budget - self.target_budget) * (remaining**3) + self.target_budget)
        return budget, step % self.config.deltaT == 0

    def step(self, global_step: int, layers: Layers) -> dict[str, torch.Tensor] | None:
        """Run the schedule after an optimizer step; returns the new keep-masks when it re-allocated."""
        if self.final_keep is not None:
            self._zero_pruned(self.final_keep, layers)  # the optimizer may have moved them off zero
            return None
        if global_step < self.end_step:
            self.update_scores(layers)
            budget, due = self.budget_at(global_step)
            if not due:
                return None
            keep = self.keep_within(budget, layers)
        else:  # the last allocation: to the target budget, then fixed
            if not self.scores:
                logger.warning(
                    "AdaLoRA adapter %r: the first on_optimizer_step call came at step %d, after the pruning phase "
                    "(which ends at total_step - tfinal = %d); ranks are chosen from this step's gradients alone",
                    self.adapter_name, global_step, self.end_step,
                )
                self.update_scores(layers)
            keep = self.keep_within(self.target_budget, layers)
            self.final_keep = keep
            self.scores.clear()
        self._zero_pruned(keep, layers)
        return keep

    def update_scores(self, layers: Layers) -> None:
        """Fold this step's ``|w * grad|`` into the moving averages."""
        beta1, beta2 = self.config.beta1, self.config.beta2
        with torch.no_grad():
            for key, layer in layers:
                for attr in FACTORS:
                    param = getattr(layer, attr)[self.adapter_name]
                    if param.grad is None:
                        raise RuntimeError(
                            f"AdaLoRA's on_optimizer_step found no gradient on {key}.{attr}; call it after "
                            f"optimizer.step() and before optimizer.zero_grad(), on a step that ran backward()"
                        )
                    sensitivity = (param * param.grad).abs()
                    old = self.scores.get((key, attr))
                    if old is None:
                        old = _Smoothed(torch.zeros_like(param), torch.zeros_like(param))
                    smoothed = beta1 * old.sensitivity + (1 - beta1) * sensitivity
                    spread = beta2 * old.uncertainty + (1 - beta2) * (sensitivity - smoothed).abs()
                    self.scores[(key, attr)] = _Smoothed(smoothed, spread)

    def triplet_scores(self, key: str) -> torch.Tensor:
        """One score per triplet of the layer at ``key``; shape (r,)."""
        score = {attr: self.scores[(key, attr)].sensitivity * self.scores[(key, attr)].uncertainty for attr in FACTORS}
        row_a = torch.mean(score["lora_A"], dim=1)  # (r, in) -> (r,)
        col_b = torch.mean(score["lora_B"], dim=0)  # (out, r) -> (r,)
        return score["lora_E"].view(-1) + (row_a + col_b)

    def keep_within(self, budget: int, layers: Layers) -> dict[str, torch.Tensor]:
        """Keep-masks (bool, (r,) per layer) that drop the ``init_budget - budget`` least important triplets.

        Ties at the threshold are all dropped, so slightly fewer may remain.
        """
        per_layer = {key: self.triplet_scores(key) for key, _ in layers}
        dropped = self.init_budget - budget
        if dropped <= 0 or not per_layer:
            return {key: torch.ones_like(s, dtype=torch.bool) for key, s in per_layer.items()}
        first = next(iter(per_layer.values()))
        everything = torch.cat([s.to(first.device) for s in per_layer.values()])
        threshold = torch.kthvalue(everything, k=dropped).values.item()
        return {key: s > threshold for key, s in per_layer.items()}

    def state_dict(self) -> dict:
        """The moving averages and the final pattern, for an exact resume."""
        return {
            "scores": {f"{key}|{attr}": {"sensitivity": s.sensitivity, "uncertainty": s.uncertainty}
                       for (key, attr), s in self.scores.items()},
            "final_keep": self.final_keep,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scores = {
            tuple(name.split("|", 1)): _Smoothed(value["sensitivity"], value["uncertainty"])
            for name, value in state["scores"].items()
        }
        self.final_keep = state["final_keep"]

    def _zero_pruned(self, keep: dict[str, torch.Tensor], layers: Layers) -> None:
        for key, layer in layers:
            if key in keep:
                layer.zero_pruned(self.adapter_name, keep[key])
