"""Virtual tokens in front of the input (prompt tuning, P-tuning, multitask prompt tuning).

The input ids become embeddings, the adapter's tokens go in front, the
attention mask grows by as many ones and the labels by as many ignored
positions. Where they go depends on the kind of model:

* decoder-only LMs and classifiers: in front of the input;
* encoder-decoder LMs: in front of the encoder input; a method whose tokens
  also serve the decoder (multitask prompt tuning) puts the second half in
  front of the decoder input, as the PEFT format defines it.
"""

from __future__ import annotations

from typing import Any

import torch

from peft_core.config import TaskType
from peft_core.prompt_learning.model import PromptModel

IGNORE_INDEX = -100


def _grow(tensor: torch.Tensor | None, count: int, fill: int) -> torch.Tensor | None:
    """Put ``count`` columns of ``fill`` in front of a (batch, length) tensor."""
    if tensor is None:
        return None
    front = torch.full((tensor.shape[0], count), fill, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([front, tensor], dim=1)


class VirtualTokenModel(PromptModel):
    """Inserts the active adapter's virtual tokens into each forward and generate call."""

    # Methods whose seq2seq tokens also prefix the decoder (the second half of the rows).
    decoder_tokens: bool = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = self._kwargs_with_input_ids(args, kwargs)
        task_ids = kwargs.pop("task_ids", None)
        config = self.active_config
        if config is None:
            return self.model(**kwargs)
        return self.model(**self.with_prompts(config, kwargs, task_ids))

    def with_prompts(self, config, kwargs: dict[str, Any], task_ids: torch.Tensor | None) -> dict[str, Any]:
        """The model inputs with the virtual tokens in place."""
        kwargs = dict(kwargs)
        n = config.num_virtual_tokens
        embed = self.model.get_input_embeddings()
        if kwargs.get("inputs_embeds") is None:
            kwargs["inputs_embeds"] = embed(kwargs.pop("input_ids"))
        kwargs.pop("input_ids", None)
        batch = kwargs["inputs_embeds"].shape[0]
        prompts = self.prompts(batch, task_ids).to(kwargs["inputs_embeds"].dtype)
        kwargs["inputs_embeds"] = torch.cat([prompts[:, :n], kwargs["inputs_embeds"]], dim=1)
        kwargs["attention_mask"] = _grow(kwargs.get("attention_mask"), n, 1)
        if kwargs.get("position_ids") is not None:
            raise ValueError("position_ids cannot be combined with virtual tokens; leave them out")
        task = config.task_type
        if task is TaskType.SEQ_2_SEQ_LM:
            if self.decoder_tokens:
                kwargs = self._decoder_tokens(prompts[:, n:], kwargs)
        else:
            kwargs["token_type_ids"] = _grow(kwargs.get("token_type_ids"), n, 0)
            if task is not TaskType.SEQ_CLS:  # token-level labels line up with the tokens
                kwargs["labels"] = _grow(kwargs.get("labels"), n, IGNORE_INDEX)
        return kwargs

    def _decoder_tokens(self, prompts: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
        n = prompts.shape[1]
        if kwargs.get("decoder_inputs_embeds") is None:
            ids = kwargs.pop("decoder_input_ids", None)
            if ids is None:
                if kwargs.get("labels") is None:
                    raise ValueError("give decoder_input_ids or labels")
                ids = self.model.prepare_decoder_input_ids_from_labels(labels=kwargs["labels"])
            kwargs["decoder_inputs_embeds"] = self.model.get_input_embeddings()(ids)
        kwargs.pop("decoder_input_ids", None)
        kwargs["decoder_inputs_embeds"] = torch.cat([prompts.to(kwargs["decoder_inputs_embeds"].dtype),
                                                     kwargs["decoder_inputs_embeds"]], dim=1)
        kwargs["decoder_attention_mask"] = _grow(kwargs.get("decoder_attention_mask"), n, 1)
        kwargs["labels"] = _grow(kwargs.get("labels"), n, IGNORE_INDEX)
        return kwargs

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate with the virtual tokens in front; returns the prompt ids plus the new tokens."""
        kwargs = self._kwargs_with_input_ids(args, kwargs)
        task_ids = kwargs.pop("task_ids", None)
        config = self.active_config
        if config is None:
            return self.model.generate(**kwargs)
        if config.task_type is TaskType.SEQ_2_SEQ_LM and self.decoder_tokens:
            raise ValueError(f"{type(self).__name__} does not generate with encoder-decoder models; use prompt tuning")
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("generate needs input_ids")
        if kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = torch.ones_like(input_ids)
        outputs = self.model.generate(**self.with_prompts(config, kwargs, task_ids))
        if config.task_type is TaskType.SEQ_2_SEQ_LM:
            return outputs  # the decoder's tokens only, as for any seq2seq model
        return _prepend(input_ids, outputs)


def _prepend(input_ids: torch.Tensor, outputs: Any) -> Any:
    """Generating from embeddings returns only new tokens; put the prompt ids back in front."""
    if isinstance(outputs, torch.Tensor):
        return torch.cat([input_ids, outputs], dim=1)
    outputs.sequences = torch.cat([input_ids, outputs.sequences], dim=1)
    return outputs
