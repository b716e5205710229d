"""The Studio's languages: complete tables, English help from the code, runtime text and engine errors translated."""

from __future__ import annotations

import string
from types import SimpleNamespace

import pytest
import yaml

from pages import common, i18n, monitor, training
from pages.i18n_engine import ENGINE_EN, card_headings, dump, engine_strings
from peft_core.data import load_text
from peft_core.data.errors import DataError
from peft_core.training.events import DoneEvent, StepEvent


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize("lang", ["zh", "ar"])
def test_every_english_key_is_translated_with_the_same_placeholders(lang):
    english, other = i18n.tables()["en"], i18n.tables()[lang]
    missing = sorted(set(english) - set(other))
    assert not missing, f"keys in en but not in {lang}: {missing}"
    assert not sorted(set(other) - set(english)), "keys no English text has (renamed or removed?)"
    wrong = [key for key in english if placeholders(english[key]) != placeholders(other[key])]
    assert not wrong, f"{lang} translations whose placeholders differ from the English: {wrong}"
    untranslated = [key for key in english if other[key] == english[key] and any(c.isalpha() for c in english[key])
                    and not key.startswith(("tab.dreambooth", "task.dreambooth", "state.ok"))]
    assert not untranslated, f"{lang} entries left in English: {untranslated}"


def test_english_engine_table_is_the_code_help_errors_and_headings():
    """engine.en.yaml is written from the code (python -m pages.i18n_engine): it must not drift."""
    written = yaml.safe_load(ENGINE_EN.read_text(encoding="utf-8"))
    assert written == engine_strings(), "run `python -m pages.i18n_engine`, then translate the new or changed keys"
    assert ENGINE_EN.read_text(encoding="utf-8") == dump(engine_strings())
    assert written["help.LoraConfig.r"].startswith("Rank of the update matrices")
    assert written["error.DataError.not_found"].startswith("{file} does not exist")


def test_a_key_missing_in_a_language_falls_back_to_english(monkeypatch):
    tables = {lang: dict(table) for lang, table in i18n.tables().items()}
    del tables["zh"]["train.start"]
    monkeypatch.setattr(i18n, "tables", lambda: tables)
    assert i18n.t("train.start", "zh") == "Start training"
    assert i18n.t("train.check", "zh") == "检查数据与显存"
    with pytest.raises(KeyError, match="no English text"):
        i18n.tr("no.such.key")


def test_the_language_comes_from_the_switch_cookie_then_the_browser():
    def request(cookie=None, accept=""):
        return SimpleNamespace(cookies={i18n.COOKIE: cookie} if cookie else {}, headers={"accept-language": accept})

    assert i18n.lang_of(request(accept="zh-CN,zh;q=0.9,en;q=0.8")) == "zh"
    assert i18n.lang_of(request(accept="fr-FR,ar;q=0.7,en;q=0.5")) == "ar"
    assert i18n.lang_of(request(accept="fr-FR")) == "en"
    assert i18n.lang_of(request(cookie="ar", accept="zh-CN")) == "ar"
    assert i18n.lang_of(None) == "en"


def test_engine_errors_are_translated_by_code_and_params(tmp_path):
    with pytest.raises(DataError) as caught:
        load_text(tmp_path / "missing.jsonl")
    exc = caught.value
    assert str(exc).endswith("does not exist. Check the path, or upload the file again.")  # the CLI stays English
    assert common.message(exc) == str(exc)
    zh, ar = common.message(exc, "zh"), common.message(exc, "ar")
    assert "不存在" in zh and "missing.jsonl" in zh
    assert "غير موجود" in ar and "missing.jsonl" in ar
    assert common.message(ValueError("plain English"), "zh") == "plain English"  # no code: as written


def test_page_errors_and_the_check_button_speak_the_page_language():
    common.configure("runs-unused", single_user=True)
    with pytest.raises(ValueError, match="no data: upload a file") as caught:
        training.data_source(None, "", "local")
    assert common.message(caught.value, "zh").startswith("没有数据")
    assert common.message(caught.value, "ar").startswith("لا توجد بيانات")


def test_the_progress_line_in_each_language(monkeypatch):
    step = StepEvent(step=3, total=300, loss=1.25, lr=1e-4, tokens_per_s=1234.0, mem_allocated_gb=0.5,
                     mem_peak_gb=0.6, elapsed_s=65.0, eta_s=600.0)
    done = DoneEvent(status="failed", output_dir="x", error="out of memory", error_code="oom")
    status = SimpleNamespace(state="failed", queue_position=None, run_dir="/nowhere", error="out of memory")
    runner = SimpleNamespace(status=lambda job, owner: status, events=lambda job, owner: ([step, done], 0),
                             log_tail=lambda job, owner, lines: "")
    monkeypatch.setattr(common, "runner", lambda: runner)
    english = monitor.snapshot("job", "local").progress
    assert "**failed** — step 3 / 300 · loss 1.2500 · 1,234 tokens/s · elapsed 0:01:05" in english
    assert english.endswith("**Error:** out of memory")
    zh = monitor.snapshot("job", "local", "zh")
    assert "**失败** — 第 3 / 300 步 · 损失 1.2500" in zh.progress and zh.progress.endswith("显存不足（OOM）")
    assert "训练损失" in set(zh.loss["series"])
    ar = monitor.snapshot("job", "local", "ar").progress
    assert "الخطوة <bdi>3 / 300</bdi>" in ar and ar.endswith("نفدت الذاكرة")


def test_model_card_headings_follow_the_chosen_language():
    from peft_core.model_card import HEADINGS

    assert card_headings("en") == HEADINGS
    zh = card_headings("zh")
    assert zh["base_model"] == "基础模型" and zh["method"].format(method="LoRA") == "方法：LoRA"
    assert card_headings("ar")["use"] == "طريقة الاستخدام"
