"""Text dataset files: every format found from its columns, bad rows left out with a reason, bad files named."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peft_core.data import (
    TEXT_FORMATS,
    ChatExample,
    DataError,
    LabeledTextExample,
    Message,
    PromptCompletionExample,
    Seq2SeqExample,
    TextExample,
    TokenTagsExample,
    load_text,
)

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def error(code: str, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        load_text(*args, **kwargs)
    assert caught.value.code == code, str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    ("name", "format", "count", "kind"),
    [
        ("alpaca.jsonl", "alpaca", 26, ChatExample),
        ("chat_messages.jsonl", "messages", 18, ChatExample),
        ("sharegpt.json", "sharegpt", 18, ChatExample),
        ("prompt_completion.jsonl", "prompt_completion", 18, PromptCompletionExample),
        ("raw_text.txt", "text", 18, TextExample),
        ("classification.csv", "classification", 24, LabeledTextExample),
        ("token_classification.jsonl", "token_classification", 24, TokenTagsExample),
        ("seq2seq.jsonl", "seq2seq", 24, Seq2SeqExample),
    ],
)
def test_samples_are_detected(name, format, count, kind):
    loaded = load_text(SAMPLES / name)
    assert loaded.format == format
    assert len(loaded.examples) == count and loaded.dropped == []
    assert all(type(example) is kind for example in loaded.examples)
    assert loaded.source == name


def test_every_format_has_a_sample():
    found = {load_text(path).format for path in SAMPLES.iterdir() if path.is_file()}
    assert found == set(TEXT_FORMATS)


def test_alpaca_becomes_a_chat(tmp_path):
    rows = [
        {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."},
        {"instruction": "Say hi", "input": "", "output": "Hi!", "history": [["Hello?", "Hello."]]},
    ]
    first, second = load_text(jsonl(tmp_path / "a.jsonl", rows)).examples
    assert first.as_dicts() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user", "assistant"]
    assert second.messages[-2]["content"] == "Say hi"


def test_sharegpt_roles_and_system_column(tmp_path):
    rows = [{"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    path = write(tmp_path / "s.json", json.dumps({"version": 2, "data": rows}))
    (example,) = load_text(path).examples
    assert example == ChatExample((Message("system", "S"), Message("user", "q"), Message("assistant", "a")))


def test_made_up_files_in_every_container(tmp_path):
    tsv = write(tmp_path / "pairs.tsv", "source\ttarget\nhello\tbonjour\ncat\tchat\n")
    assert load_text(tsv).examples == [Seq2SeqExample("hello", "bonjour"), Seq2SeqExample("cat", "chat")]
    table = pa.table({"prompt": ["1+1=", "2+2="], "completion": ["2", "4"], "id": [1, 2]})
    pq.write_table(table, tmp_path / "pc.parquet")
    loaded = load_text(tmp_path / "pc.parquet")
    assert loaded.format == "prompt_completion" and loaded.columns == ["prompt", "completion", "id"]
    assert loaded.examples[1] == PromptCompletionExample("2+2=", "4")
    # JSON Lines saved under a .json name is read line by line
    lines = jsonl(tmp_path / "tokens.json", [{"tokens": ["a", "b"], "tags": [0, 1]}] * 3)
    loaded = load_text(lines)
    assert loaded.format == "token_classification" and loaded.examples[0].tags == ("0", "1")


def test_extra_columns_do_not_confuse_detection(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"id": 1, "text": "hello world", "meta": {"a": 1}}])
    assert load_text(path).format == "text"
    path = write(tmp_path / "c.csv", "id,text,label,source\n1,good,pos,web\n2,bad,neg,web\n")
    assert load_text(path).format == "classification"  # text + label wins over text alone


def test_column_mapping(tmp_path):
    path = write(tmp_path / "reviews.csv", "review,sentiment,text\nloved it,positive,ignored\nawful,negative,x\n")
    loaded = load_text(path, columns={"text": "review", "label": "sentiment"})
    assert loaded.format == "classification"
    assert loaded.examples == [LabeledTextExample("loved it", "positive"), LabeledTextExample("awful", "negative")]
    assert loaded.columns == ["review", "sentiment", "text"]
    loaded = load_text(path, format="text", columns={"text": "review"})
    assert loaded.examples == [TextExample("loved it"), TextExample("awful")]


def test_column_mapping_errors(tmp_path):
    path = write(tmp_path / "reviews.csv", "review,sentiment\nloved it,positive\n")
    err = error("bad_column_mapping", path, format="classification", columns={"body": "review"})
    assert "body" in str(err) and "text, label" in str(err)
    err = error("missing_columns", path, columns={"text": "comment"})
    assert "comment" in str(err) and "review, sentiment" in str(err)


def test_chosen_format_with_missing_columns(tmp_path):
    path = jsonl(tmp_path / "data.jsonl", [{"instruction": "x", "response": "y"}])
    err = error("missing_columns", path, format="alpaca")
    assert err.params["missing"] == "output"
    assert "instruction, response" in str(err) and "alpaca" in str(err)


def test_unknown_and_ambiguous_formats(tmp_path):
    path = jsonl(tmp_path / "prefs.jsonl", [{"chosen": "a", "rejected": "b"}])
    err = error("unknown_format", path)
    assert "chosen, rejected" in str(err) and "alpaca: instruction + output" in str(err)
    both = [{"instruction": "q", "output": "a", "messages": [{"role": "user", "content": "q"}]}]
    err = error("unknown_format", jsonl(tmp_path / "both.jsonl", both))
    assert "alpaca, messages" in str(err)


def test_unusable_rows_are_dropped_with_reasons(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": ["an", "image", "part"]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "x"}]},
        ["not", "an", "object"],
        {"messages": []},
    ]
    loaded = load_text(jsonl(tmp_path / "chat.jsonl", rows))
    assert len(loaded.examples) == 1
    reasons = {row.row: row.reason for row in loaded.dropped}
    assert reasons[2] == "the conversation has no assistant turn to learn from"
    assert "content is a list, not text" in reasons[3]
    assert "'tool'" in reasons[4]
    assert "not an object" in reasons[5]
    assert "empty list" in reasons[6]


def test_dropped_rows_in_other_formats(tmp_path):
    rows = [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a", "b"], "tags": ["O"]}]
    loaded = load_text(jsonl(tmp_path / "tok.jsonl", rows))
    assert [(row.row, row.reason) for row in loaded.dropped] == [(2, "tokens and tags have different lengths")]
    # CSV rows are numbered by their first line, quoted line breaks included
    path = write(tmp_path / "c.csv", 'text,label\n"two\nlines",a\n   ,b\nextra,c,d\nfine,e\n')
    loaded = load_text(path)
    assert loaded.examples == [LabeledTextExample("two\nlines", "a"), LabeledTextExample("fine", "e")]
    assert [(row.row, row.reason) for row in loaded.dropped] == [
        (4, "text is empty"),
        (5, "has 3 fields but the header has 2"),
    ]
    loaded = load_text(jsonl(tmp_path / "t.jsonl", [{"text": "x"}, {"text": 5}, {"text": None}]))
    assert [row.reason for row in loaded.dropped] == ["text is a number, not text", "text is empty"]


def test_every_row_dropped_names_the_most_common_reason(tmp_path):
    rows = [{"prompt": "p", "completion": ""}] * 3 + [{"prompt": "p", "completion": 4}]
    err = error("no_usable_rows", jsonl(tmp_path / "pc.jsonl", rows))
    assert "None of the 4 rows" in str(err) and "(3 rows): completion is empty" in str(err)


def test_labels(tmp_path):
    numbers = jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0.0}])
    assert [example.label for example in load_text(numbers).examples] == ["1", "0"]
    mixed = jsonl(
        tmp_path / "m.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": "positive"}]
    )
    err = error("mixed_labels", mixed)
    assert "'1' on line 1" in str(err) and "'positive' on line 3" in str(err)
    error("mixed_labels", write(tmp_path / "m.csv", "text,label\na,0\nb,positive\n"))
    tags = jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": [0, "B-PER"]}])
    error("mixed_labels", tags)


def test_binary_file_with_a_text_name(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    err = error("not_text", path)
    assert "data.jsonl" in str(err) and "binary" in str(err)
    (tmp_path / "sheet.csv").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert "Excel" in str(error("not_text", tmp_path / "sheet.csv"))


def test_latin1_csv_names_line_and_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,pos\ncaf\u00e9,pos\n".encode("latin-1"))
    err = error("not_utf8", path)
    assert err.params["line"] == 3 and err.params["offset"] == 23
    assert "line 3" in str(err) and "UTF-8" in str(err)


def test_utf16_is_named(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("text\tlabel\nhi\tx\n".encode("utf-16"))
    assert "UTF-16" in str(error("not_utf8", path))


def test_utf8_split_across_read_blocks_is_fine(tmp_path):
    # the UTF-8 check reads 1 MiB blocks; a character cut by the block edge must not be reported
    path = tmp_path / "long.txt"
    path.write_bytes(b"a" * (2**20 - 1) + "\u00e9\n".encode() + b"caf\xe9\n")
    err = error("not_utf8", path)
    assert err.params["line"] == 2 and err.params["offset"] == 2**20 + 5


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n')
    err = error("invalid_json", path)
    assert err.params["line"] == 3 and "line 3" in str(err)
    path = write(tmp_path / "bad.json", '[\n {"text": "a"},\n {"text": b}\n]')
    assert "line 3" in str(error("invalid_json", path))
    path = write(tmp_path / "scalar.json", '"just a string"')
    error("bad_json_structure", path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("blank.jsonl", "\n\n  \n"), ("header.csv", "text,label\n"), ("e.json", "[]"), ("e.txt", "\n\n")],
)
def test_empty_files(tmp_path, name, content):
    assert "no data rows" in str(error("empty_file", write(tmp_path / name, content)))


def test_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.truncate(3 * 2**30)  # sparse: 3 GiB of nothing on disk
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("opened a file that is too large"))
    err = error("too_large", path)
    assert "3.0 GiB" in str(err) and "512.0 MiB" in str(err)
    monkeypatch.undo()
    small = write(tmp_path / "small.txt", "hello\n" * 100)
    assert error("too_large", small, max_bytes=100).params["limit"] == "100 bytes"


def test_wrong_files(tmp_path):
    error("not_found", tmp_path / "nope.csv")
    error("not_a_file", tmp_path)
    assert "Save it as one of" in str(error("unsupported_extension", write(tmp_path / "data.xlsx", "x")))
    error("bad_parquet", write(tmp_path / "data.parquet", "text\nhello\n"))
    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + b"\x01" * 100)
    error("bad_parquet", tmp_path / "cut.parquet")
    error("bad_csv", write(tmp_path / "dup.csv", "text,text\na,b\n"))
    with pytest.raises(ValueError, match="format must be 'auto' or one of alpaca"):
        load_text(SAMPLES / "alpaca.jsonl", format="chat")


def test_long_csv_fields_and_bom(tmp_path):
    long = "word " * 60_000  # past the csv module's default 128 KiB field limit
    path = tmp_path / "long.csv"
    path.write_bytes(("\ufefftext\n" + f'"{long}"\n').encode())
    assert load_text(path).examples == [TextExample(long)]


def test_loading_writes_nothing(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    before = sorted(tmp_path.rglob("*"))
    load_text(path)
    assert sorted(tmp_path.rglob("*")) == before


def test_examples_are_values():
    message = Message("user", "hi")
    assert dict(message) == {"role": "user", "content": "hi"} and message["content"] == "hi"
    chat = ChatExample((message, Message("assistant", "hello")))
    assert hash(chat) == hash(ChatExample((Message("user", "hi"), Message("assistant", "hello"))))
    with pytest.raises(ValueError, match="role must be one of system, user, assistant"):
        Message("bot", "x")
    with pytest.raises(ValueError, match="same length"):
        TokenTagsExample(("a",), ())


def test_errors_carry_code_and_params_and_pickle():
    err = DataError("invalid_json", file="a.jsonl", line=3, column=5, reason="Expecting value", jsonl_hint="")
    assert isinstance(err, ValueError) and err.params["line"] == 3
    again = pickle.loads(pickle.dumps(err))
    assert again.code == "invalid_json" and str(again) == str(err)


def test_a_dataset_folder_loads_through_datasets(tmp_path, monkeypatch):
    # a Hub dataset repo as downloaded: one data file per split (here with Parquet and JSON Lines)
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    rows = [{"text": f"review {i}", "label": "good" if i % 2 else "bad"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    loaded = load_text(folder)
    assert loaded.format == "classification" and loaded.source == "my-dataset"
    assert [e.text for e in loaded.examples] == [r["text"] for r in rows]
    assert not home.exists()  # the Arrow cache went to a temporary folder, now gone
    assert sorted(p.name for p in folder.iterdir()) == ["train.parquet"]


def test_a_hub_id_that_cannot_be_reached_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    err = error("dataset_not_found", "nobody-here/no-such-dataset:test")
    assert "nobody-here/no-such-dataset" in str(err) and "owner/name" in str(err)
    # a missing file with an extension is a missing file, not a Hub id
    error("not_found", "data/train.jsonl")
