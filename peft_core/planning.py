"""What an adapter would be on a model, worked out without loading any weights.

The model is built from its config on PyTorch's ``meta`` device (shapes, no
memory), the adapter is injected, and the plan reports which modules it
wraps and how many parameters would train. The UI shows this before a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from peft_core.config import TaskType
from peft_core.layers import AdapterLayer
from peft_core.models import check_model_name, model_load_error
from peft_core.peft_model import get_peft_model
from peft_core.presets import base_model_id, resolve_model
from peft_core.registry import get_method

_AUTO_CLASSES = {
    TaskType.CAUSAL_LM: "AutoModelForCausalLM",
    TaskType.SEQ_2_SEQ_LM: "AutoModelForSeq2SeqLM",
    TaskType.SEQ_CLS: "AutoModelForSequenceClassification",
    TaskType.TOKEN_CLS: "AutoModelForTokenClassification",
    TaskType.IMAGE_CLS: "AutoModelForImageClassification",
}


@dataclass
class AdapterPlan:
    model: str
    architecture: str
    method: str
    wrapped_modules: list[str]
    trainable_params: int
    total_params: int
    adapter_config: dict[str, Any]

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable_params / self.total_params if self.total_params else 0.0


def plan_adapter(
    model_name_or_path: str, method: str, settings: dict[str, Any], task_type: TaskType | str = TaskType.CAUSAL_LM
) -> AdapterPlan:
    """Inject ``method`` with ``settings`` into a weightless copy of the model and report."""
    import transformers

    task = TaskType(task_type)
    spec = get_method(method)
    # validates before any model work
    config = spec.config_cls(task_type=task, base_model_name_or_path=base_model_id(model_name_or_path), **settings)
    source = resolve_model(check_model_name(model_name_or_path))
    try:
        model_config = transformers.AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise model_load_error(model_name_or_path, exc) from None
    auto = getattr(transformers, _AUTO_CLASSES[task])
    with torch.device("meta"):
        base = auto.from_config(model_config)
    model = get_peft_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    wrapped = [key for key, module in model.get_base_model().named_modules() if isinstance(module, AdapterLayer)]
    resolved = model.peft_config["default"]
    return AdapterPlan(
        model=model_name_or_path,
        architecture=type(base).__name__,
        method=spec.title,
        wrapped_modules=wrapped,
        trainable_params=trainable,
        total_params=total,
        adapter_config=resolved.to_dict(),
    )
