"""Memory advice and the data report's reasons: English for the CLI, translated by code for the page."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest

from pages import common, i18n, monitor
from peft_core.data import load_text
from peft_core.data.errors import DataError
from peft_core.data.reasons import Reason
from peft_core.training.events import DoneEvent, event_from_json, event_to_json
from peft_core.training.memory_advice import Advice, _batch_text


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_memory_advice_is_english_text_with_a_code_translated_all_the_way_down():
    advice = Advice("all_of", steps=[Advice("adamw_8bit"), _batch_text(8, 2)])
    assert advice == "all of: use 8-bit AdamW; batch size 2 with gradient accumulation x4 (same effective batch 8)"
    assert pickle.loads(pickle.dumps(advice)).to_dict() == advice.to_dict()
    zh = i18n.say(advice, "zh")
    assert zh == "同时采用以下全部：使用 8 位 AdamW; 批大小 2，梯度累积 x4（有效批大小仍为 8）"
    assert i18n.say(advice.to_dict(), "ar").startswith("كل ما يلي معًا: استخدم AdamW بثمانية بتات; حجم الدفعة 2")
    assert i18n.say("plain text", "zh") == "plain text"


def test_advice_after_an_oom_survives_the_event_log_and_is_shown_in_the_page_language(monkeypatch):
    advice = [Advice("oom_try"), _batch_text(8, 4), Advice("shorten_now", length=1024)]
    done = DoneEvent(status="failed", output_dir="x", error="out of memory", error_code="oom", advice=advice,
                     advice_keys=[line.to_dict() for line in advice])
    done = event_from_json(event_to_json(done))
    assert done.advice[0] == "training ran out of memory; try, one at a time:"  # the CLI's English
    status = SimpleNamespace(state="failed", queue_position=None, run_dir="/nowhere", error="out of memory")
    runner = SimpleNamespace(status=lambda job, owner: status, events=lambda job, owner: ([done], 0),
                             log_tail=lambda job, owner, lines: "")
    monkeypatch.setattr(common, "runner", lambda: runner)
    assert "  - batch size 4 with gradient accumulation x2 (same effective batch 8)" in monitor.snapshot("j", "local").log
    zh = monitor.snapshot("j", "local", "zh").log
    assert "  - 训练显存不足；请逐一尝试：" in zh and "  - 缩短最大长度（当前 1024 个词元）" in zh
    assert "  - نفدت ذاكرة التدريب" in monitor.snapshot("j", "local", "ar").log


def test_dropped_rows_say_why_in_each_language(tmp_path):
    loaded = load_text(jsonl(tmp_path / "t.jsonl", [{"text": "x"}, {"text": 5}, {"text": None}, {"txt": "y"}]))
    reasons = [row.reason for row in loaded.dropped]
    assert reasons == ["text is a number, not text", "text is empty", "has no text"]
    assert [i18n.say(reason, "zh") for reason in reasons] == ["text 是数字，不是文本", "text 为空", "缺少 text"]
    assert i18n.say(reasons[0], "ar") == "الحقل text عدد، لا نص"
    with pytest.raises(DataError) as caught:  # every row dropped: the error names the reason, translated too
        load_text(jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": ""}] * 2))
    assert "(2 rows): completion is empty" in str(caught.value)
    assert "completion 为空" in common.message(caught.value, "zh")
    warning = Reason("remote_code", model="me/model")
    assert "me/model" in i18n.say(warning, "zh") and "trust_remote_code 已开启" in i18n.say(warning, "zh")
