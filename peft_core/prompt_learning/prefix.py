"""A prefix of trained keys and values in every attention layer, through transformers' cache API.

The adapter's tokens, shaped ``(tokens, layers * 2 * width)``, become one
key and one value tensor per layer, ``(batch, heads, tokens, head_dim)``,
put into a ``DynamicCache`` as if the model had already read ``tokens``
positions. The attention mask grows by as many ones in front.

* Decoder-only LMs take the cache as ``past_key_values``.
* Encoder-decoder LMs take it for the decoder's self-attention (an empty
  cross-attention cache). The PEFT format fixes which stored layer serves
  which decoder layer: decoder layer ``i`` reads stored layer ``2i mod L``.
  We follow it so that adapters cross between the libraries unchanged.
* Encoders (classification) whose head does not take ``past_key_values`` get
  it through a hook on their backbone (``bert`` in BertForSequenceClassification),
  so the model's own pooling, head and loss still run.

Generation continues from the prefix: ``tokens`` placeholder ids stand for the
cached positions (transformers skips ids the cache already covers), and are
cut from the result.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from peft_core.config import TaskType
from peft_core.prompt_learning.model import PromptModel
from peft_core.prompt_learning.virtual_tokens import _grow


def prefix_cache(tokens: torch.Tensor, config, seq2seq: bool) -> DynamicCache | EncoderDecoderCache:
    """Keys and values per layer from ``tokens`` (batch, n, layers * 2 * width)."""
    batch, n, _ = tokens.shape
    layers, heads = config.num_layers, config.num_attention_heads
    # (batch, n, layers*2, heads, head_dim) -> (layers*2, batch, heads, n, head_dim)
    kv = tokens.reshape(batch, n, layers * 2, heads, config.token_dim // heads).permute(2, 0, 3, 1, 4)
    order = [(2 * i) % layers for i in range(layers)] if seq2seq else range(layers)
    cache = DynamicCache([(kv[2 * j], kv[2 * j + 1]) for j in order])
    return EncoderDecoderCache(cache, DynamicCache()) if seq2seq else cache


def takes_cache(module: nn.Module) -> bool:
    return "past_key_values" in inspect.signature(module.forward).parameters


class PrefixModel(PromptModel):
    """Puts the active adapter's prefix into each forward and generate call."""

    @classmethod
    def model_problem(cls, model: nn.Module) -> str | None:
        backbone = getattr(model, getattr(model, "base_model_prefix", ""), model)
        if takes_cache(model) or takes_cache(backbone):
            return None
        return (
            f"prefix tuning needs a model whose attention takes past_key_values; "
            f"{type(model).__name__} does not. Use prompt tuning or LoRA instead."
        )

    def check_model(self, config) -> None:
        problem = self.model_problem(self.model)
        if problem:
            raise ValueError(problem)
        if config.token_dim % config.num_attention_heads:
            raise ValueError(f"token_dim {config.token_dim} is not divisible by num_attention_heads {config.num_attention_heads}")

    def _backbone(self) -> nn.Module:
        return getattr(self.model, getattr(self.model, "base_model_prefix", ""), self.model)

    def _cache(self, config, batch: int) -> DynamicCache | EncoderDecoderCache:
        tokens = self.prompts(batch).to(self.model.get_input_embeddings().weight.dtype)
        return prefix_cache(tokens, config, seq2seq=config.task_type is TaskType.SEQ_2_SEQ_LM)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = self._kwargs_with_input_ids(args, kwargs)
        config = self.active_config
        if config is None:
            return self.model(**kwargs)
        if kwargs.get("past_key_values") is not None:
            raise ValueError("prefix tuning supplies past_key_values itself; leave them out")
        if self.training and any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules()):
            # transformers' checkpointed layers drop past_key_values, which would drop the prefix
            raise ValueError(
                "prefix tuning cannot train with gradient checkpointing (transformers drops the cached prefix in "
                "checkpointed layers); turn gradient checkpointing off, or use prompt tuning or LoRA"
            )
        n = config.num_virtual_tokens
        cache = self._cache(config, self._batch_size(kwargs))
        if config.task_type is TaskType.SEQ_2_SEQ_LM:
            kwargs["decoder_attention_mask"] = _grow(kwargs.get("decoder_attention_mask"), n, 1)
        else:
            kwargs["attention_mask"] = _grow(kwargs.get("attention_mask"), n, 1)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n  # the prefix holds positions 0..n-1
        if takes_cache(self.model):
            return self.model(**kwargs, past_key_values=cache)
        with self._cache_into_backbone(cache):
            return self.model(**kwargs)

    @contextmanager
    def _cache_into_backbone(self, cache):
        def add_cache(module, args, kwargs):
            return args, {**kwargs, "past_key_values": cache}

        handle = self._backbone().register_forward_pre_hook(add_cache, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate from the prefix; returns the prompt ids plus the new tokens."""
        kwargs = self._kwargs_with_input_ids(args, kwargs)
        config = self.active_config
        if config is None:
            return self.model.generate(**kwargs)
        n = config.num_virtual_tokens
        batch = self._batch_size(kwargs)
        kwargs["past_key_values"] = self._cache(config, batch)
        if config.task_type is TaskType.SEQ_2_SEQ_LM:
            start = self.model.generation_config.decoder_start_token_id
            starts = kwargs.pop("decoder_input_ids", None)
            if starts is None:
                starts = torch.full((batch, 1), start, dtype=torch.long, device=kwargs["input_ids"].device)
            kwargs["decoder_input_ids"] = _grow(starts, n, start)
            kwargs["decoder_attention_mask"] = torch.ones_like(kwargs["decoder_input_ids"])
            return _cut(self.model.generate(**kwargs), n)
        input_ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        kwargs["attention_mask"] = _grow(torch.ones_like(input_ids) if mask is None else mask, n, 1)
        kwargs["input_ids"] = _grow(input_ids, n, 0)  # placeholders for the cached prefix positions
        return _cut(self.model.generate(**kwargs), n)


def _cut(outputs: Any, n: int) -> Any:
    """Drop the ``n`` placeholder positions from generated sequences."""
    if isinstance(outputs, torch.Tensor):
        return outputs[:, n:]
    outputs.sequences = outputs.sequences[:, n:]
    return outputs
