"""The Test tab's engine: the base side is the plain base model, the adapted side is the adapter loaded directly.

Testers run on the CPU in fp32, like the oracles, so answers match exactly on any machine.

Each run trains a few steps at a high learning rate, so its adapter clearly
changes what the model answers. The oracles are models loaded here on their
own: the base with no adapter at all, and ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import SAMPLES, run_config
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from peft_core import PeftModel
from peft_core.compare import HEAD_SEED, AdapterTester, Comparison
from peft_core.inference import DiffusionInference
from peft_core.run_config import RunConfig
from peft_core.tasks import make_task
from peft_core.training.run import read_labels, train

PROMPT = "What is the capital of France?"
CPU = torch.device("cpu")


def trained(tmp_path_factory, name: str, task: str, model: str, data: str, **training) -> Path:
    run_dir = tmp_path_factory.mktemp(name) / name
    settings = {"max_steps": 4, "learning_rate": 5e-2, **training}
    done = train(run_config(task, model, SAMPLES / data, run_dir, data={"eval_fraction": 0.0}, **settings))
    assert done.status == "ok", done.error
    return run_dir


@pytest.fixture(scope="module")
def runs(model_dirs, tmp_path_factory) -> dict[str, Path]:
    specs = {
        "chat": ("causal_lm", "llama", "alpaca.jsonl", {}),
        "other": ("causal_lm", "llama", "prompt_completion.jsonl", {"seed": 1}),
        "s2s": ("seq2seq", "t5", "seq2seq.jsonl", {}),
        "seq": ("seq_cls", "bert", "classification.csv", {"save_steps": 2}),
        "tok": ("token_cls", "bert", "token_classification.jsonl", {"max_steps": 6}),
        "img": ("image_cls", "vit", "shapes", {}),
    }
    return {name: trained(tmp_path_factory, name, task, model_dirs[model], data, **extra)
            for name, (task, model, data, extra) in specs.items()}


def greedy_text(model, tokenizer, prompt: str, new_tokens: int) -> str:
    """Greedy decoding of one chat-template user turn, new tokens only: the oracle for causal LM."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def direct_causal(model_dir: str, run_dir: Path | None, new_tokens: int = 12) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if run_dir is not None:
        model = PeftModel.from_pretrained(model, run_dir)
    return greedy_text(model, tokenizer, PROMPT, new_tokens)


def classifier(run_dir: Path, with_adapter: bool) -> tuple[torch.nn.Module, object]:
    """The run's base model with its labels (the new head seeded as the tester seeds it), maybe with the adapter."""
    task = make_task(RunConfig.from_yaml(run_dir / "config.yaml"))
    task.load_processor()
    task.labels = read_labels(run_dir)
    with torch.random.fork_rng():
        torch.manual_seed(HEAD_SEED)
        model = task.load_model("fp32", CPU).eval()
    return (PeftModel.from_pretrained(model, run_dir) if with_adapter else model), task


def top_labels(logits: torch.Tensor, labels: list[str]) -> list[tuple[str, float]]:
    probabilities = logits.softmax(-1)
    order = probabilities.argsort(descending=True)[:5].tolist()
    return [(labels[i], float(probabilities[i])) for i in order]


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-5, atol=1e-6)


# -- text generation ----------------------------------------------------------------------------------
def test_causal_lm_sides_are_the_plain_base_and_the_adapter(runs, model_dirs):
    tester = AdapterTester.for_run(runs["chat"], device="cpu")
    result = tester.compare(PROMPT, max_new_tokens=12)
    assert isinstance(result, Comparison) and result.adapter == "chat" and result.task == "causal_lm"
    assert result.base == direct_causal(model_dirs["llama"], None)
    assert result.adapted == direct_causal(model_dirs["llama"], runs["chat"])
    assert result.base != result.adapted
    assert PROMPT not in result.adapted  # the answer only, not the prompt


def test_the_seed_decides_a_sampled_answer_and_the_callers_random_state_is_kept(runs):
    tester = AdapterTester.for_run(runs["chat"], device="cpu")
    first = tester.compare(PROMPT, seed=7, temperature=1.0, max_new_tokens=10)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = tester.compare(PROMPT, seed=7, temperature=1.0, max_new_tokens=10)
    assert torch.equal(torch.rand(3), expected)  # sampling did not move the caller's random numbers
    assert (again.base, again.adapted) == (first.base, first.adapted)
    others = [tester.compare(PROMPT, seed=s, temperature=1.0, max_new_tokens=10).adapted for s in (8, 9)]
    assert any(text != first.adapted for text in others)
    greedy = tester.compare(PROMPT, seed=1, max_new_tokens=10)
    assert greedy.adapted == tester.compare(PROMPT, seed=2, max_new_tokens=10).adapted  # greedy ignores the seed


def test_two_adapters_on_one_base_each_answer_as_loaded_alone(runs, model_dirs, tmp_path):
    tester = AdapterTester.for_run(runs["chat"], device="cpu")
    name = tester.load_adapter(runs["other"])
    assert tester.adapters == ["chat", "other"] and name == "other" and tester.active_adapter == "other"
    other = tester.compare(PROMPT, max_new_tokens=12)
    assert other.adapter == "other"
    assert other.adapted == direct_causal(model_dirs["llama"], runs["other"])
    tester.set_adapter("chat")
    chat = tester.compare(PROMPT, max_new_tokens=12)
    assert chat.adapted == direct_causal(model_dirs["llama"], runs["chat"]) != other.adapted
    assert chat.base == other.base == direct_causal(model_dirs["llama"], None)
    assert tester.load_adapter(runs["chat"]) == "chat-2"  # the same folder again gets a name of its own
    with pytest.raises(ValueError, match="already loaded"):
        tester.load_adapter(runs["other"], name="other")
    with pytest.raises(ValueError, match="no adapter named 'nope'; loaded: chat, other, chat-2"):
        tester.set_adapter("nope")
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    shutil.copy(runs["chat"] / "adapter_model.safetensors", ia3)
    (ia3 / "adapter_config.json").write_text(json.dumps({
        "peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": ["q_proj"],
        "base_model_name_or_path": model_dirs["llama"]}))
    with pytest.raises(ValueError, match="IA3 adapter, but the adapters loaded here are LORA; methods cannot be mixed"):
        tester.load_adapter(ia3)
    assert tester.adapters == ["chat", "other", "chat-2"]


def test_seq2seq_sides_are_the_plain_base_and_the_adapter(runs, model_dirs):
    tester = AdapterTester.for_run(runs["s2s"], device="cpu")
    text = "question: what is the capital of Japan?"
    result = tester.compare(text, max_new_tokens=8)
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["t5"])
    inputs = tokenizer(text, return_tensors="pt")

    def direct(with_adapter: bool) -> str:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dirs["t5"]).eval()
        model = PeftModel.from_pretrained(model, runs["s2s"]) if with_adapter else model
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        return tokenizer.decode(output[0], skip_special_tokens=True)

    assert (result.base, result.adapted) == (direct(False), direct(True))
    assert result.base != result.adapted


# -- classification ---------------------------------------------------------------------------------
def test_seq_cls_gives_the_top_labels_of_each_side_with_the_runs_label_names(runs):
    text = "I loved this film, the acting was superb."
    tester = AdapterTester.for_run(runs["seq"], device="cpu")
    result = tester.compare(text)
    assert tester.labels == read_labels(runs["seq"]) == ["negative", "positive"]
    for side, with_adapter in ((result.base, False), (result.adapted, True)):
        model, task = classifier(runs["seq"], with_adapter)
        with torch.no_grad():
            logits = model(**task.processor(text, return_tensors="pt")).logits[0]
        assert_same_ranking(side, top_labels(logits, task.labels))
    assert result.base != result.adapted
    checkpoint = AdapterTester.for_run(runs["seq"] / "checkpoint-2", device="cpu")  # labels.json of its run
    assert checkpoint.adapters == ["seq-checkpoint-2"] and checkpoint.labels == ["negative", "positive"]


def test_token_cls_tags_each_word_by_its_first_sub_token(runs):
    text = "Alice works at Acme Corp in Tokyo"
    result = AdapterTester.for_run(runs["tok"], device="cpu").compare(text)
    words = text.split()
    for side, with_adapter in ((result.base, False), (result.adapted, True)):
        model, task = classifier(runs["tok"], with_adapter)
        encoded = task.processor(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            predicted = model(**encoded).logits[0].argmax(-1).tolist()
        firsts = {}
        for position, word in enumerate(encoded.word_ids(0)):
            firsts.setdefault(word, position)
        assert side == [(w, task.labels[predicted[firsts[i]]]) for i, w in enumerate(words)]
    assert result.base != result.adapted


def test_image_cls_takes_a_path_or_an_image(runs):
    path = min((SAMPLES / "shapes" / "circle").iterdir())
    tester = AdapterTester.for_run(runs["img"], device="cpu")
    result = tester.compare(path)
    with Image.open(path) as opened:
        assert tester.compare(opened.copy()).adapted == result.adapted
    for side, with_adapter in ((result.base, False), (result.adapted, True)):
        model, task = classifier(runs["img"], with_adapter)
        with Image.open(path) as opened:
            pixels = task.processor(images=[opened.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            assert_same_ranking(side, top_labels(model(pixel_values=pixels).logits[0], task.labels))
    assert sorted(label for label, _ in result.adapted) == ["circle", "square", "triangle"]
    assert result.base != result.adapted


def test_without_labels_json_the_classes_are_label_i_and_a_note_says_why(runs, model_dirs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(runs["seq"] / name, bare / name)
    tester = AdapterTester(model_dirs["bert"], "seq_cls", device="cpu")
    assert tester.load_adapter(bare) == "bare"
    result = tester.compare("A delightful surprise.")
    named = AdapterTester.for_run(runs["seq"], device="cpu").compare("A delightful surprise.")
    assert tester.labels == ["LABEL_0", "LABEL_1"]
    assert any("labels.json" in note for note in result.notes) and tester.notes == result.notes[:1]
    renamed = {"negative": "LABEL_0", "positive": "LABEL_1"}
    assert_same_ranking(result.adapted, [(renamed[label], p) for label, p in named.adapted])


# -- what is refused --------------------------------------------------------------------------------
def test_loading_errors_say_what_is_wrong(runs, model_dirs, tmp_path):
    tester = AdapterTester(model_dirs["llama"], "causal_lm", device="cpu")
    with pytest.raises(ValueError, match="no adapter loaded"):
        tester.compare(PROMPT)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"holds no adapter: expected adapter_config.json .*notes.txt"):
        tester.load_adapter(empty)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs["chat"] / "config.yaml", unfinished / "config.yaml")
    with pytest.raises(ValueError, match="has no adapter yet"):
        tester.load_adapter(unfinished)
    with pytest.raises(ValueError, match="does not exist"):
        tester.load_adapter(tmp_path / "missing")
    with pytest.raises(ValueError, match="SEQ_2_SEQ_LM adapter, but this tester is for causal_lm"):
        tester.load_adapter(runs["s2s"])
    with pytest.raises(ValueError, match="not a run folder"):
        AdapterTester.for_run(empty)
    assert tester.adapters == []


def test_an_adapter_of_another_base_model_is_refused_naming_both(runs, model_dirs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["chat"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    tester = AdapterTester(model_dirs["llama"], "causal_lm", device="cpu")
    with pytest.raises(ValueError, match=rf"'someone/other-model', but this tester's base is '{model_dirs['llama']}'"):
        tester.load_adapter(moved)
    assert tester.adapters == []
    tester.load_adapter(moved, check_base=False)  # the same model under another name: the user's call
    result = tester.compare(PROMPT, max_new_tokens=12)
    assert result.adapted == direct_causal(model_dirs["llama"], runs["chat"])
    assert any("someone/other-model" in note for note in result.notes)
    with pytest.raises(ValueError, match="compare has no option 'max_tokens'"):
        tester.compare(PROMPT, max_tokens=3)
    with pytest.raises(ValueError, match="temperature must be 0"):
        tester.compare(PROMPT, temperature=-1)


# -- DreamBooth ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dreambooth_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dreambooth")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 40 * i, 40)).save(images / f"dog{i}.png")
    config = RunConfig.from_dict({
        "task": "dreambooth",
        "model": {"name_or_path": "tiny-sd-random"},
        "method": {"name": "lora", "r": 4, "lora_alpha": 8},
        "data": {"train": str(images)},
        "dreambooth": {"instance_prompt": "a photo of sks dog", "with_prior_preservation": False,
                       "resolution": 32, "validation_steps": None},
        "training": {"output_dir": str(root / "run"), "max_steps": 3, "batch_size": 2, "learning_rate": 5e-2,
                     "save_steps": None, "eval_steps": None},
    })
    done = train(config)
    assert done.status == "ok", done.error
    return root / "run"


def test_dreambooth_images_of_the_base_and_the_adapter(dreambooth_run):
    tester = AdapterTester.for_run(dreambooth_run, device="cpu")
    result = tester.compare("a photo of sks dog", seed=3, steps=3, num_images=2)
    assert len(result.base) == len(result.adapted) == 2
    pixels = [np.asarray(image, dtype=np.int16) for image in (*result.base, *result.adapted)]
    plain, with_adapter = (DiffusionInference("tiny-sd-random", adapter, device="cpu").generate(
        "a photo of sks dog", seed=3, num_inference_steps=3, num_images=2) for adapter in (None, dreambooth_run))
    for got, expected in zip(pixels, [*plain, *with_adapter], strict=True):
        assert np.abs(got - np.asarray(expected, dtype=np.int16)).max() <= 1
    assert np.abs(pixels[0] - pixels[2]).max() > 10  # the adapter changes the image
    again = tester.compare("a photo of sks dog", seed=3, steps=3, num_images=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again.adapted, result.adapted, strict=True))
    other = tester.compare("a photo of sks dog", seed=4, steps=3)
    assert not np.array_equal(np.asarray(other.adapted[0]), np.asarray(result.adapted[0]))
