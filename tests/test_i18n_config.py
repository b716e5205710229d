"""Bad settings reach the page in its language: every config validation error has a code the tables translate."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import gradio as gr
import pytest
from test_pages import widget_values

from pages import common, i18n, training
from pages.forms import form_fields
from peft_core import LoraConfig, list_methods
from peft_core.config_errors import ConfigError
from peft_core.run_config import DataSettings, DreamBoothSettings, ModelSettings, RunConfig, TrainingSettings

BAD_VALUES = (0, -1, 2.5, math.nan, math.inf, "nonsense", "", None, True, [1], [""], {"x": 0}, {"q_proj": -2})
REQUIRED = {"AdaLoraConfig": {"total_step": 100}}


def settings_classes() -> list[type]:
    return [spec.config_cls for spec in list_methods()] + [ModelSettings, DataSettings, TrainingSettings,
                                                           DreamBoothSettings]


def test_every_bad_value_of_every_config_is_refused_with_a_code_the_tables_know():
    english = i18n.tables()["en"]
    refused = 0
    for cls in settings_classes():
        base = REQUIRED.get(cls.__name__, {})
        for field in dataclasses.fields(cls):
            if not field.init or field.name in ("extra_keys", "tokenizer_kwargs"):
                continue
            for bad in BAD_VALUES:
                try:
                    cls(**{**base, field.name: bad})
                except ValueError as exc:
                    refused += 1
                    where = f"{cls.__name__}.{field.name}={bad!r}: {exc}"
                    assert getattr(exc, "code", None), f"no code: {where}"
                    assert f"error.{type(exc).__name__}.{exc.code}" in english, f"no table entry: {where}"
                except (TypeError, AttributeError):  # not a value a form or YAML gives for this field
                    pass
    assert refused > 200  # the walk reached the checks


def test_the_run_config_sections_refuse_with_codes():
    for data in ({"optimiser": {}}, {"training": [1]}, {"training": {"rank": 8}}, {"method": {"name": "lora", "rank": 8}},
                 {"method": {"r": 8}}, {"task": "summarise"}, {"training": {"max_steps": None}}):
        with pytest.raises(ConfigError):
            RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match="must look like section.setting=value") as caught:
        RunConfig().with_overrides(["nonsense"])
    assert caught.value.code == "bad_override"


@pytest.mark.parametrize(("method", "hyper", "english", "zh", "ar"), [
    ({"r": 0}, {}, "r must be a positive whole number", "r 必须是正整数", "يجب أن يكون r عددًا صحيحًا موجبًا"),
    ({}, {"learning_rate": math.nan}, "training.learning_rate must be a number above 0 and at most 1; got nan",
     "training.learning_rate 必须是大于 0、不大于 1 的数；收到的是 nan",
     "يجب أن يكون training.learning_rate عددًا أكبر من 0 ولا يزيد على 1؛ القيمة المعطاة nan"),
    ({}, {"batch_size": 0}, "training.batch_size must be a positive whole number; got 0",
     "training.batch_size 必须是正整数；收到的是 0", "يجب أن يكون training.batch_size عددًا صحيحًا موجبًا"),
], ids=["r=0", "lr=nan", "batch=0"])
def test_a_bad_value_from_the_form_is_shown_in_the_page_language(method, hyper, english, zh, ar, tmp_path):
    common.configure(tmp_path / "runs", single_user=True)

    def gather(args):
        return "local", training.config_from_form(
            "causal_lm", "smollm2-135m-instruct", "lora", widget_values(form_fields(LoraConfig), **method),
            "data.jsonl", "auto", widget_values(training.HYPER_FIELDS, **hyper))

    do_check, do_start = training.run_actions(gather)
    for lang, expected in (("en", english), ("zh", zh), ("ar", ar)):
        request = SimpleNamespace(cookies={i18n.COOKIE: lang}, headers={})
        for handler in (do_check, do_start):
            with pytest.raises(gr.Error) as caught:
                handler(request)
            assert expected in caught.value.message, (lang, caught.value.message)
    with pytest.raises(ConfigError) as caught:  # the CLI and the engine stay English
        gather(())
    assert english in str(caught.value)


def test_a_param_called_key_is_filled_not_mistaken_for_the_table_key():
    from peft_core.methods.lycoris import LycorisConfig

    with pytest.raises(ConfigError) as caught:
        LycorisConfig(rank_pattern={"(": 2})
    assert str(caught.value) == "rank_pattern key '(' is not a valid regular expression; use a module name such as 'q_proj'"
    assert common.message(caught.value, "zh") == "rank_pattern 的键 '(' 不是有效的正则表达式；请使用模块名，例如 'q_proj'"
