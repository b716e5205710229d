"""peft_core: parameter-efficient fine-tuning, writing adapters in the PEFT library's format."""

from peft_core.config import PeftConfig, PeftType, TaskType
from peft_core.kbit import prepare_model_for_kbit_training
from peft_core.methods import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
)
from peft_core.peft_model import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForImageClassification,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_peft_model,
)
from peft_core.registry import MethodSpec, get_method, list_methods
from peft_core.serialization import PickleRefusedError, get_peft_model_state_dict, set_peft_model_state_dict

__version__ = "0.1.0"

__all__ = [
    "AdaLoraConfig",
    "IA3Config",
    "LoHaConfig",
    "LoKrConfig",
    "LoraConfig",
    "MethodSpec",
    "MultitaskPromptTuningConfig",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForImageClassification",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PickleRefusedError",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptTuningConfig",
    "TaskType",
    "get_method",
    "get_peft_model",
    "get_peft_model_state_dict",
    "list_methods",
    "prepare_model_for_kbit_training",
    "set_peft_model_state_dict",
]
