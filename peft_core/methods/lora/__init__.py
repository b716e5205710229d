"""LoRA, with the DoRA and rsLoRA options."""

from peft_core.config import PeftType, TaskType
from peft_core.methods.lora.config import LoraConfig
from peft_core.methods.lora.layer import LoraConv2d, LoraEmbedding, LoraLayer, LoraLinear
from peft_core.methods.lora.model import LoraModel
from peft_core.registry import MethodSpec, register_method

SPEC = register_method(
    MethodSpec(
        name="lora",
        title="LoRA",
        peft_type=PeftType.LORA,
        config_cls=LoraConfig,
        model_cls=LoraModel,
        tasks=frozenset(TaskType),
        mergeable=True,
        summary="Low-rank updates to chosen weight matrices; mergeable, the usual first choice.",
    )
)

__all__ = ["SPEC", "LoraConfig", "LoraConv2d", "LoraEmbedding", "LoraLayer", "LoraLinear", "LoraModel"]
