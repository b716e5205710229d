"""Will a run fit in memory? An estimate before any weight is loaded, advice after an OOM.

``estimate_memory`` reads the model's shape from a model that may live on the
``meta`` device (with the adapter injected, so parameter counts are real) and
adds up what training holds at its peak:

* weights of the frozen base model, at ``weight_bits`` (embeddings, norms and
  the output head stay in the compute dtype when the linear layers are quantized);
* the trainable parameters, their gradients and the optimizer state, in fp32;
* activations kept for the backward pass (``_activation_elements`` counts
  them per token) and the fp32 logits of the loss;
* overhead: the runtime itself, and what the allocator holds beyond live
  tensors (a share of the activations, larger on CPU).

Sizes are in GB of 2**30 bytes, as PyTorch and nvidia-smi report them. The
formula was checked against the peak memory of real CPU training steps
(tests/test_memory.py); on a GPU it leaves the fused attention kernels' own
workspace and the fp32 copies some norms make under autocast to the slack.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from peft_core.layers import AdapterLayer
from peft_core.training.events import available_ram_gb, device_memory_gb  # noqa: F401  (part of this API)

logger = logging.getLogger(__name__)

GiB = 2**30
WEIGHT_BITS = (32, 16, 8, 4)
OPTIMIZERS = {"adamw": 8.0, "adamw_8bit": 2.0}  # bytes of state per trainable parameter
# Bytes per quantized weight: nf4 packs two weights a byte plus an fp32 scale per 64 weights.
_QUANT_BYTES = {8: 1.0, 4: 0.5 + 4 / 64}
# The process itself before any model: CUDA context and kernels on a GPU,
# Python with torch and transformers imported on a CPU. Keys: "cpu", and
# "cuda" standing for any accelerator.
RUNTIME_GB = {"cuda": 0.6, "cpu": 0.7}
# Memory the allocator holds beyond live tensors, as a share of the activations.
# glibc's heap keeps most of what activations free, in pieces: measured 6-200%
# (median ~50%) on CPU steps. PyTorch's CUDA caching allocator splits and reuses
# its blocks; 15% is an assumption, not a measurement.
ALLOCATOR_SLACK = {"cuda": 0.15, "cpu": 0.5}

# -- the model's shape ---------------------------------------------------------------------

# f-sized tensors (intermediate size) an MLP activation keeps for backward: fused
# kernels keep their input; composites written in Python keep their pieces too.
_ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 4, "quick_gelu": 2}
_CONFIG_KEYS = {
    "hidden": ("hidden_size", "d_model", "n_embd"),
    "layers": ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer"),
    "decoder_layers": ("num_decoder_layers", "decoder_layers"),
    "heads": ("num_attention_heads", "encoder_attention_heads", "n_head", "num_heads"),
    "intermediate": ("intermediate_size", "d_ff", "n_inner", "encoder_ffn_dim", "ffn_dim"),
    "activation": ("hidden_act", "activation_function", "feed_forward_proj"),
    "dropout": ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "dropout_rate"),
}


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about a model, read once from its config and modules."""

    total_params: int
    quantizable_params: int  # frozen linear weights outside the output head
    hidden: int
    kv_dim: int  # width of keys and values (smaller than hidden with grouped-query attention)
    heads: int
    intermediate: int
    num_blocks: int  # transformer blocks, encoder and decoder together
    cross_blocks: int  # decoder blocks that also attend to the encoder
    vocab: int  # size of the output vocabulary; 0 when the head is not a language-model head
    fixed_seq_len: int | None  # image models: patches + 1
    mlp_saves: float  # f-sized tensors an MLP keeps for backward
    adapter_inputs: float  # features per token per block kept by adapter layers for their gradients
    eager_attention: bool
    attention_dropout: float


def model_facts(model: nn.Module) -> ModelFacts:
    """Read the shape of ``model`` (a PeftModel or a transformers model, on any device, meta included)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        raise ValueError(f"cannot estimate memory for {type(base).__name__}: it has no transformers config")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = {
        kind: next((getattr(text, k) for k in keys if getattr(text, k, None) is not None), None)
        for kind, keys in _CONFIG_KEYS.items()
    }
    missing = [kind for kind in ("hidden", "layers", "heads") if values[kind] is None]
    if missing:
        sizes = " / ".join(missing)
        raise ValueError(f"cannot estimate memory for {type(base).__name__}: its config has no {sizes} size")
    hidden, heads = int(values["hidden"]), int(values["heads"])
    intermediate = int(values["intermediate"] or 4 * hidden)
    decoder = int(values["decoder_layers"] or values["layers"]) if getattr(text, "is_encoder_decoder", False) else 0
    output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelFacts(
        total_params=sum(p.numel() for p in model.parameters()),  # prompt encoders live outside the base
        quantizable_params=_quantizable(base, output),
        hidden=hidden,
        kv_dim=hidden * int(kv_heads) // heads,
        heads=heads,
        intermediate=intermediate,
        num_blocks=int(values["layers"]) + decoder,
        cross_blocks=decoder,
        vocab=output.weight.shape[0] if output is not None else 0,
        fixed_seq_len=_image_tokens(text),
        mlp_saves=_mlp_saves(base, values["activation"], intermediate, int(values["layers"]) + decoder),
        adapter_inputs=_adapter_inputs(base) / (int(values["layers"]) + decoder),
        eager_attention=getattr(text, "_attn_implementation", "eager") in (None, "eager"),
        attention_dropout=float(values["dropout"] or 0.0),
    )


def _linear_modules(model: nn.Module) -> list[nn.Module]:
    """The model's own linear layers (Linear, GPT-2's Conv1D), not those inside adapters."""
    inside_adapters: set[int] = set()
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            inside_adapters.update(id(m) for m in module.modules() if m is not module)
            inside_adapters.difference_update(id(m) for m in module.base_layer.modules())
    return [
        m for m in model.modules()
        if id(m) not in inside_adapters and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    ]


def _out_features(module: nn.Module) -> int:
    return getattr(module, "out_features", None) or getattr(module, "nf", 0)


def _quantizable(model: nn.Module, output: nn.Module | None) -> int:
    """Weights bitsandbytes would quantize: frozen linear layers except the output head."""
    out_weight = getattr(output, "weight", None)
    # A model without an adapter yet has nothing frozen: all its linear layers count.
    frozen_only = any(not p.requires_grad for p in model.parameters())
    return sum(
        m.weight.numel() for m in _linear_modules(model)
        if m.weight is not out_weight and not (frozen_only and m.weight.requires_grad)
    )


def _mlp_saves(model: nn.Module, activation: Any, intermediate: int, blocks: int) -> float:
    activation = str(activation or "gelu").removeprefix("gated-")
    saves = _ACTIVATION_SAVES.get(activation, 1)
    widening = sum(1 for m in _linear_modules(model) if _out_features(m) == intermediate)
    # Two projections up to the intermediate size per block (gate and up) mean a gated MLP,
    # which also keeps both factors of their product.
    return saves + 2 if widening >= 2 * blocks else saves


def _adapter_inputs(model: nn.Module) -> int:
    """Input features of the wrapped layers: an adapter keeps its layer's input to compute its gradient."""
    total = 0
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            base = module.base_layer
            total += getattr(base, "in_features", None) or getattr(base, "nx", 0)
    return total


def _image_tokens(config: Any) -> int | None:
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not image or not patch or getattr(config, "vocab_size", None):
        return None
    sides = image if isinstance(image, (list, tuple)) else (image, image)
    patches = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    return (sides[0] // patches[0]) * (sides[1] // patches[1]) + 1


def _activation_elements(facts: ModelFacts, seq: int, materialized_attention: bool) -> tuple[float, float]:
    """Elements kept per token for backward: (per block, once per model).

    A block keeps q, k, v and the attention output, the inputs of its norms
    and residual branches (about 6h + 2kv in all), the MLP's f-sized
    tensors, and what its adapters keep. Attention computed eagerly also
    keeps the probabilities (heads x seq per token), three times with dropout.
    """
    h = facts.hidden
    block = 6 * h + 2 * facts.kv_dim + facts.mlp_saves * facts.intermediate + facts.adapter_inputs
    # cross-attention (q, k, v, output and a norm), averaged over all blocks
    block += facts.cross_blocks / facts.num_blocks * (4 * h + 2 * facts.kv_dim)
    if materialized_attention:
        block += (3 if facts.attention_dropout > 0 else 1) * facts.heads * seq
    return block, 4 * h  # embeddings and the final norm


@dataclass
class MemoryEstimate:
    """Memory a training run needs at its peak, by part, in GB."""

    weights_gb: float
    adapter_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float
    notes: list[str]
    # What it was computed from, so fits() can try changes.
    facts: ModelFacts | None = field(default=None, repr=False, compare=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """The sizes alone (for an EstimateEvent)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_gb")}


def estimate_memory(
    model: nn.Module,
    trainable_params: int,
    *,
    batch_size: int,
    seq_len: int,
    weight_bits: int = 32,
    compute_bytes: int = 4,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """Estimate the peak memory of training ``model`` (which may be on the meta device).

    ``weight_bits``: 32 (fp32), 16 (fp16/bf16), 8 (int8) or 4 (nf4) for the
    frozen weights; ``compute_bytes``: 4, or 2 under fp16/bf16 autocast;
    ``optimizer``: "adamw" or "adamw_8bit"; ``device_type``: "cpu" or an
    accelerator ("cuda", the default) -- CPU runs keep the seq x seq attention
    when it has dropout, and their allocator holds more memory back.
    For image models the sequence is the patches plus one, whatever ``seq_len`` says.
    """
    settings = {
        "trainable_params": trainable_params, "batch_size": batch_size, "seq_len": seq_len,
        "weight_bits": weight_bits, "compute_bytes": compute_bytes, "optimizer": optimizer,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "device_type": "cpu" if device_type == "cpu" else "cuda",
    }
    _validate(settings)
    return _estimate(model_facts(model), settings)


_CHOICES = {
    "weight_bits": (WEIGHT_BITS, "32 fp32, 16 fp16/bf16, 8 int8, 4 nf4"),
    "compute_bytes": ((4, 2), "4 for fp32, 2 under fp16/bf16 autocast"),
    "optimizer": (tuple(OPTIMIZERS), "the optimizers peft_core trains with"),
}


def _validate(settings: dict[str, Any]) -> None:
    for name in ("batch_size", "seq_len", "trainable_params"):
        value, lowest = settings[name], 0 if name == "trainable_params" else 1
        if not isinstance(value, int) or value < lowest:
            raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    for name, (choices, meaning) in _CHOICES.items():
        if settings[name] not in choices:
            raise ValueError(f"{name} must be one of {list(choices)} ({meaning}), got {settings[name]!r}")


def _estimate(facts: ModelFacts, settings: dict[str, Any]) -> MemoryEstimate:
    trainable = settings["trainable_params"]
    notes: list[str] = []
    weights = _weight_bytes(facts, trainable, settings, notes)
    adapter = trainable * 4.0  # trainable parameters are kept in fp32
    gradients = trainable * 4.0
    optimizer = trainable * OPTIMIZERS[settings["optimizer"]]
    seq = facts.fixed_seq_len or settings["seq_len"]
    if facts.fixed_seq_len and facts.fixed_seq_len != settings["seq_len"]:
        notes.append(f"an image is {facts.fixed_seq_len - 1} patches plus one class token: sequence length {seq}")
    activations = _activation_bytes(facts, settings, seq, notes)
    device = settings["device_type"]
    overhead = RUNTIME_GB[device] * GiB + ALLOCATOR_SLACK[device] * activations
    parts = [p / GiB for p in (weights, adapter, gradients, optimizer, activations, overhead)]
    return MemoryEstimate(*parts, total_gb=sum(parts), notes=notes, facts=facts, settings=dict(settings))


def _weight_bytes(facts: ModelFacts, trainable: int, settings: dict[str, Any], notes: list[str]) -> float:
    frozen, bits = max(0, facts.total_params - trainable), settings["weight_bits"]
    if bits >= 16:
        return frozen * bits / 8
    # bitsandbytes quantizes the linear layers; the rest is loaded in the compute dtype.
    quantized = min(facts.quantizable_params, frozen)
    notes.append(f"{quantized / max(frozen, 1):.0%} of the frozen weights are quantized to {bits}-bit")
    return quantized * _QUANT_BYTES[bits] + (frozen - quantized) * settings["compute_bytes"]


def _activation_bytes(facts: ModelFacts, settings: dict[str, Any], seq: int, notes: list[str]) -> float:
    batch, compute = settings["batch_size"], settings["compute_bytes"]
    cpu_dropout = settings["device_type"] == "cpu" and facts.attention_dropout > 0
    per_layer, per_model = _activation_elements(facts, seq, materialized_attention=facts.eager_attention or cpu_dropout)
    if settings["gradient_checkpointing"]:
        # Only each block's input is kept; one block is recomputed at a time in backward.
        kept = facts.num_blocks * facts.hidden + per_layer + per_model
    else:
        kept = facts.num_blocks * per_layer + per_model
    total = batch * seq * kept * compute
    if facts.vocab:
        # The loss works in fp32: logits, their log-softmax and the gradient of each.
        total += batch * seq * facts.vocab * (compute + 12)
        logits_gb = batch * seq * facts.vocab * (compute + 12) / GiB
        notes.append(f"logits over a vocabulary of {facts.vocab:,} take {logits_gb:.2f} GB")
    if facts.eager_attention:
        notes.append("this model computes attention eagerly: memory grows with the square of the sequence length")
    return total


# What to change when a run does not fit (kept apart; part of this module's API).
from peft_core.training.memory_advice import Advice, Suggestion, fits, oom_advice, suggest_changes  # noqa: F401
