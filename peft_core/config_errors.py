"""Bad settings in a method's config or the run config, as `ConfigError`s with a stable code and params.

The same shapes recur across configs (a positive whole number, a number in a
range, one of a few choices), so most codes are generic and name the setting
in ``name``; the rest say something only one setting needs. ``value`` is the
offending value as ``repr`` shows it. ``str(err)`` is the English message
(the CLI's); the Studio translates the code (``error.ConfigError.<code>``).
"""

from __future__ import annotations

from typing import Any

from peft_core.errors import UserError

MESSAGES: dict[str, str] = {
    # generic shapes
    "positive_int": "{name} must be a positive whole number; got {value}",
    "rank": "{name} must be a positive whole number (a rank, e.g. 8); got {value}",
    "at_least_one": "{name} must be a whole number of at least 1; got {value}",
    "whole_number": "{name} must be a whole number; got {value}",
    "steps_at_least": "{name} must be a whole number of steps >= {low}; got {value}",
    "number_range": "{name} must be a number at least {low} and at most {high}; got {value}",
    "number_range_open": "{name} must be a number above {low} and at most {high}; got {value}",
    "positive_number": "{name} must be a positive number (e.g. 8 or 16); got {value}",
    "non_negative_number": "{name} must be a number >= 0; got {value}",
    "between_0_and_1": "{name} must be a number between 0 and 1 (exclusive), e.g. 0.85; got {value}",
    "dropout": "{name} must be at least 0 and below 1 (e.g. 0.1, or 0 for none); got {value}",
    "one_of": "{name} must be one of {choices}; got {value}",
    "true_or_false": "{name} must be true or false; got {value}",
    "true_or_false_flag": "{name} must be True or False; got {value}",
    "multiple_of_8": "{name} must be a multiple of 8; got {value}",
    # module selection
    "names_or_regex": "{name} must be a list of module names or one regular expression; got {value}",
    "layer_numbers": "layers_to_transform must be layer numbers >= 0 (e.g. [0, 1]); got {value}",
    "layers_with_regex": (
        "layers_to_transform cannot be combined with a regular-expression target_modules; list names instead"
    ),
    "layers_pattern_alone": (
        "layers_pattern only has a meaning together with layers_to_transform; set both or neither"
    ),
    "pattern_map": (
        "{name} must map module names or regular expressions to values, e.g. {{'q_proj': 4}}; got {value}"
    ),
    "pattern_regex": "{name} key {key} is not a valid regular expression; use a module name such as 'q_proj'",
    "task_type": "task_type {value} is not a known task type; use one of: {choices}",
    # LoRA, IA3, LoKr
    "init_lora_weights": "init_lora_weights must be True, False or 'gaussian'; got {value}",
    "dora_with_lora_bias": "use_dora and lora_bias cannot be combined; turn one of them off",
    "init_ia3_weights": "init_ia3_weights must be True (vectors of ones) or False (random, for tests); got {value}",
    "feedforward_not_targeted": (
        "feedforward_modules {stray} are not in target_modules {targets}; a feedforward module is a target whose "
        "input is scaled, so add {stray} to target_modules or drop them from feedforward_modules"
    ),
    "decompose_factor": (
        "decompose_factor must be -1 (split each dimension near its square root) or a whole number >= 1 "
        "(e.g. 4); got {value}"
    ),
    # AdaLoRA
    "target_r": "target_r must be a whole number from 1 to init_r={init_r}; got {value}",
    "adalora_r": (
        "AdaLoRA does not use r (got r={value}); set init_r for the starting rank and target_r for the average "
        "rank after pruning"
    ),
    "total_step_required": (
        "total_step is required for AdaLoRA: set it to the number of optimizer steps training will run "
        "(batches per epoch x epochs / gradient accumulation steps); the rank budget schedule is laid out over it"
    ),
    "no_steps_to_prune": (
        "the schedule leaves no steps to prune ranks in: tinit={tinit} warm-up steps and tfinal={tfinal} final "
        "steps use up total_step={total_step}; tinit must be below total_step - tfinal = {room}. Lower tinit or "
        "tfinal, or raise total_step"
    ),
    "keep_flags_map": "rank_pattern must map '<module path>.lora_E' to keep-flags; got {value}",
    "keep_flags_key": (
        "rank_pattern key {key} does not name a layer's singular values ('<module path>.lora_E'); AdaLoRA's "
        "rank_pattern is written by training, not a per-module rank as in LoRA"
    ),
    "keep_flags_type": "rank_pattern[{key}] must be a list of true/false keep-flags, one per initial rank",
    "keep_flags_count": (
        "rank_pattern[{key}] has {count} keep-flags but init_r is {init_r}; the pattern and init_r must come "
        "from the same adapter"
    ),
    # prompt methods
    "text_init_needs_text": "prompt_tuning_init TEXT needs prompt_tuning_init_text and tokenizer_name_or_path",
    "source_init_needs_path": "prompt_tuning_init {init} needs prompt_tuning_init_state_dict_path",
    "encoder_type": "encoder_reparameterization_type must be MLP or LSTM; got {value}",
    # the run config
    "empty_model": "model.name_or_path is empty; pick a preset or enter a Hub id or local path",
    "empty_output_dir": "training.output_dir is empty; name a folder for the run",
    "steps_or_epochs": "set training.max_steps or training.num_epochs",
    "empty_instance_prompt": "dreambooth.instance_prompt is empty; describe your images, e.g. 'a photo of sks dog'",
    "empty_class_prompt": "dreambooth.class_prompt is empty; prior preservation needs it (e.g. 'a photo of dog')",
    "validation_prompts": "dreambooth.validation_prompts must be a list of prompts",
    "method_needs_name": "method needs a name, e.g. {{name: lora, r: 8}}",
    "unknown_method_setting": "method {method} has no setting {names}; its settings are: {known}",
    "not_sections": "a run config is a mapping of sections; got {kind}",
    "unknown_sections": (
        "unknown section(s) {names}; a run config has: task, model, method, data, training, dreambooth"
    ),
    "section_not_mapping": "{name} must be a mapping of settings; got {value}",
    "unknown_setting": "{name} has no setting {names}; it has: {known}",
    "bad_yaml": "{path} is not valid YAML: {reason}",
    "bad_override": "override {item} must look like section.setting=value",
}


class ConfigError(UserError):
    """A setting of a method or a run that cannot work; ``str(err)`` is the English message."""

    messages = MESSAGES


def bad(code: str, name: str | None = None, value: Any = None, **params: Any) -> ConfigError:
    """A `ConfigError` whose ``value`` param is the value as ``repr`` shows it (raise what this returns)."""
    if name is not None:
        params["name"] = name
    return ConfigError(code, **params, value=repr(value))


def positive_int(name: str, value: Any, code: str = "positive_int") -> None:
    """Refuse anything but a whole number above 0 (``code``: positive_int, rank or at_least_one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad(code, name, value)


def flag(name: str, value: Any, code: str = "true_or_false") -> None:
    """Refuse anything but True or False."""
    if not isinstance(value, bool):
        raise bad(code, name, value)
