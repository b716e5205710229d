"""AdaLoRA: SVD-form LoRA whose rank budget moves to the layers that matter while training."""

from peft_core.config import PeftType, TaskType
from peft_core.methods.adalora.allocator import RankAllocator
from peft_core.methods.adalora.config import AdaLoraConfig
from peft_core.methods.adalora.layer import AdaLoraLinear
from peft_core.methods.adalora.model import AdaLoraModel
from peft_core.registry import MethodSpec, register_method

SPEC = register_method(
    MethodSpec(
        name="adalora",
        title="AdaLoRA",
        peft_type=PeftType.ADALORA,
        config_cls=AdaLoraConfig,
        model_cls=AdaLoraModel,
        tasks=frozenset(TaskType),
        mergeable=True,
        summary="LoRA that starts at init_r and moves its rank budget to the layers that matter; needs total_step.",
    )
)

__all__ = ["SPEC", "AdaLoraConfig", "AdaLoraLinear", "AdaLoraModel", "RankAllocator"]
