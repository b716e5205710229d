"""Publishing runs: push to a local Hub stand-in, model cards, ZIP downloads, merged models, and the token kept secret."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_standin import HubStandIn
from PIL import Image
from safetensors.torch import load_file
from tiny_runs import SAMPLES, run_config

from peft_core import PeftModel
from peft_core.publish import PublishError, merge_run, model_card_for_run, push_run, zip_adapter
from peft_core.training.run import train

TOKEN = "hf_tEsTsEcReT0123456789abcdef"
BAD_TOKEN = "hf_bAdBaDbAd9876543210zyxwv"
PUSHED = {"README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png", "training_config.yaml"}


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # conftest keeps the Hub offline
    with HubStandIn(bad_tokens={BAD_TOKEN}) as standin:
        yield standin


@pytest.fixture(scope="module")
def llama_run(model_dirs, tmp_path_factory) -> Path:
    """A 6-step LoRA run with checkpoints and evaluations, plus files a push must leave behind."""
    run_dir = tmp_path_factory.mktemp("llama") / "run"
    done = train(run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", run_dir,
                            save_steps=3, eval_steps=3))
    assert done.status == "ok", done.error
    (run_dir / "data").mkdir()
    (run_dir / "data" / "train.jsonl").write_text("{}\n")
    (run_dir / "train.log").write_text("log\n")
    return run_dir


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def with_adapter(base_dir: str, adapter_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)


def is_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


# -- push -------------------------------------------------------------------------------------


def test_push_sends_the_adapter_card_and_config_and_nothing_else(llama_run, model_dirs, hub):
    url = push_run(llama_run, "someone/tiny-lora", TOKEN, endpoint=hub.url)
    assert url == f"{hub.url}/someone/tiny-lora"
    files = hub.files("someone/tiny-lora")
    assert set(files) == PUSHED  # no checkpoint-*/, best/, data/, events.jsonl or train.log
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert files[name] == (llama_run / name).read_bytes()
    assert files["training_config.yaml"] == (llama_run / "config.yaml").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\n") and "LoRA" in card and model_dirs["llama"] in card
    assert "PeftModel.from_pretrained(base, \"someone/tiny-lora\")" in card and "](loss.png)" in card
    assert "alpaca.jsonl" in card and "| steps | `6 of 6` |" in card and "eval_loss" in card
    plot = np.asarray(is_png(files["loss.png"]))
    assert plot.shape == (400, 720, 3)
    assert (np.abs(plot - np.array([31, 119, 180])).sum(-1) == 0).sum() > 200  # the loss line
    assert (plot.sum(-1) < 200).sum() > 500  # dark axes and labels
    assert hub.repos["someone/tiny-lora"].private is False and hub.unknown == []

    push_run(llama_run, "someone/hidden", TOKEN, private=True, endpoint=hub.url)
    assert hub.repos["someone/hidden"].private is True


def test_hf_endpoint_is_read_when_pushing(llama_run, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    assert push_run(llama_run, "someone/from-env", TOKEN) == f"{hub.url}/someone/from-env"
    assert set(hub.files("someone/from-env")) == PUSHED


def test_peft_model_push_to_hub_reaches_hf_endpoint(llama_run, model_dirs, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with_adapter(model_dirs["llama"], llama_run).push_to_hub("someone/direct", token=TOKEN)
    files = hub.files("someone/direct")
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert "PeftModel.from_pretrained(base, \"someone/direct\")" in files["README.md"].decode()


def test_the_token_never_leaves_the_authorization_header(llama_run, hub, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    push_run(llama_run, "someone/secret", TOKEN, endpoint=hub.url)
    assert hub.authorizations and set(hub.authorizations) == {f"Bearer {TOKEN}"}
    assert not any(TOKEN.encode() in data for data in hub.files("someone/secret").values())
    assert not any(TOKEN.encode() in request.body for request in hub.requests)
    push_run(llama_run, "someone/pasted", f" {TOKEN}\n", endpoint=hub.url)  # pasted with a newline
    assert set(hub.authorizations) == {f"Bearer {TOKEN}"}
    with pytest.raises(PublishError, match="unusual characters") as odd:
        push_run(llama_run, "someone/secret", TOKEN[:8] + " " + TOKEN[8:], endpoint=hub.url)
    assert TOKEN[8:] not in str(odd.value)
    with pytest.raises(PublishError) as caught:
        push_run(llama_run, "someone/secret", BAD_TOKEN, endpoint=hub.url)
    assert caught.value.code == "bad_token"
    message = str(caught.value)
    assert "refused the token" in message and "https://huggingface.co/settings/tokens" in message
    shown = "".join(traceback.format_exception(caught.value))
    for token in (TOKEN, BAD_TOKEN):
        assert token not in shown and token not in caplog.text
        assert not any(token.encode() in p.read_bytes() for p in llama_run.rglob("*") if p.is_file())


def test_network_and_offline_failures_are_named(llama_run, hub, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(PublishError) as caught:
        push_run(llama_run, "someone/x", TOKEN, endpoint=closed)
    assert caught.value.code == "network" and closed in str(caught.value) and TOKEN not in str(caught.value)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        push_run(llama_run, "someone/x", TOKEN, endpoint=hub.url)


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "user/with space", "", "/name", "user/", "user/name.git",
                                     "-user/name", "user/..x", "user/név"])
def test_bad_repo_ids_are_refused_before_any_request(llama_run, hub, repo_id):
    with pytest.raises(PublishError, match="your-username/model-name|.git") as caught:
        push_run(llama_run, repo_id, TOKEN, endpoint=hub.url)
    assert caught.value.code == "bad_repo_id" and hub.requests == []


def _copy_run(run_dir: Path, target: Path, keep_events: int | None = None, done: dict | None = None) -> Path:
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoint-*", "best", "data"))
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    lines = [line for line in lines if '"type": "done"' not in line][:keep_events]
    if done:
        lines.append(json.dumps({"type": "done", "output_dir": str(target), **done}) + "\n")
    (target / "events.jsonl").write_text("".join(lines))
    return target


def test_runs_without_a_final_adapter_are_refused_clearly(llama_run, hub, tmp_path):
    cases = {
        "unfinished": (_copy_run(llama_run, tmp_path / "running", keep_events=5), "has not finished"),
        "failed": (_copy_run(llama_run, tmp_path / "failed", done={"status": "failed", "error": "out of memory"}),
                   r"failed \(out of memory\)"),
        "no_adapter": (_copy_run(llama_run, tmp_path / "empty", done={"status": "ok"}), "no final adapter"),
        "not_a_run": (tmp_path, "not a run folder"),
    }
    (tmp_path / "empty" / "adapter_model.safetensors").unlink()
    for code, (run_dir, words) in cases.items():
        for publish in (lambda d: push_run(d, "someone/x", TOKEN, endpoint=hub.url),
                        lambda d: zip_adapter(d, tmp_path / "zips"), lambda d: merge_run(d, tmp_path / "merged")):
            with pytest.raises(PublishError, match=words) as caught:
                publish(run_dir)
            assert caught.value.code == code
    assert hub.requests == [] and not (tmp_path / "merged").exists() and not (tmp_path / "zips").exists()


# -- download and merge -------------------------------------------------------------------------


def test_zip_round_trips_and_never_overwrites(llama_run, model_dirs, tmp_path):
    dest = tmp_path / "downloads"
    dest.mkdir()
    (dest / "run-adapter.zip").write_bytes(b"mine")
    first = zip_adapter(llama_run, dest)
    second = zip_adapter(llama_run, dest)
    assert (dest / "run-adapter.zip").read_bytes() == b"mine"
    assert [first.name, second.name] == ["run-adapter-2.zip", "run-adapter-3.zip"]
    with zipfile.ZipFile(first) as archive:
        assert set(archive.namelist()) == PUSHED - {"training_config.yaml"} | {"config.yaml"}
        archive.extractall(tmp_path / "unzipped")
    assert "path/to/this/folder" in (tmp_path / "unzipped" / "README.md").read_text()
    expected = logits_of(with_adapter(model_dirs["llama"], llama_run))
    torch.testing.assert_close(logits_of(with_adapter(model_dirs["llama"], tmp_path / "unzipped")), expected,
                               rtol=0, atol=0)


def test_merged_model_loads_with_transformers_and_matches(llama_run, model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = merge_run(llama_run, tmp_path)
    assert folder == tmp_path / "run-merged"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert not [k for k in load_file(folder / "model.safetensors") if "lora" in k or "base_layer" in k]
    merged = AutoModelForCausalLM.from_pretrained(folder)
    expected = logits_of(with_adapter(model_dirs["llama"], llama_run))
    torch.testing.assert_close(logits_of(merged), expected, rtol=1e-4, atol=1e-5)
    assert (logits_of(AutoModelForCausalLM.from_pretrained(model_dirs["llama"])) - expected).abs().max() > 1e-3
    assert AutoTokenizer.from_pretrained(folder)("hello").input_ids
    assert merge_run(llama_run, tmp_path) == tmp_path / "run-merged-2"
    assert (folder / "model.safetensors").is_file()  # the first one untouched


def test_a_merged_classifier_keeps_its_labels(model_dirs, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTForImageClassification

    images = shutil.make_archive(str(tmp_path / "shapes"), "zip", SAMPLES / "shapes")
    run_dir = tmp_path / "vit"
    done = train(run_config("image_cls", model_dirs["vit"], images, run_dir))
    assert done.status == "ok", done.error
    labels = json.loads((run_dir / "labels.json").read_text())["labels"]
    folder = merge_run(run_dir, tmp_path / "out")
    merged = AutoModelForImageClassification.from_pretrained(folder)
    assert merged.config.id2label == dict(enumerate(labels))
    base = ViTForImageClassification.from_pretrained(model_dirs["vit"], num_labels=len(labels),
                                                     ignore_mismatched_sizes=True)
    adapted = PeftModel.from_pretrained(base, run_dir)
    pixels = AutoImageProcessor.from_pretrained(folder)(Image.new("RGB", (40, 40), (200, 30, 30)),
                                                        return_tensors="pt").pixel_values
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=pixels).logits, adapted(pixel_values=pixels).logits,
                                   rtol=1e-4, atol=1e-5)
    pushed_card, _ = model_card_for_run(run_dir, "someone/shapes")
    assert "library_name: peft" in pushed_card and "num_labels=len(labels)" in pushed_card and labels[0] in pushed_card


def test_prompt_tuning_cannot_be_merged(model_dirs, tmp_path):
    run_dir = tmp_path / "prompt"
    done = train(run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", run_dir,
                            method={"name": "prompt_tuning", "num_virtual_tokens": 4}, max_steps=2))
    assert done.status == "ok", done.error
    with pytest.raises(PublishError, match="Prompt tuning adapters .* cannot be merged") as caught:
        merge_run(run_dir, tmp_path / "merged")
    assert caught.value.code == "not_mergeable" and not (tmp_path / "merged").exists()
    assert zip_adapter(run_dir, tmp_path).is_file()  # it can still be downloaded


# -- DreamBooth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dreambooth_run(tmp_path_factory) -> Path:
    from peft_core.run_config import RunConfig

    root = tmp_path_factory.mktemp("dreambooth")
    config = RunConfig.from_dict({
        "task": "dreambooth", "model": {"name_or_path": "tiny-sd-random"},
        "method": {"name": "lora", "r": 4, "lora_alpha": 8}, "data": {"train": str(SAMPLES / "dreambooth")},
        "dreambooth": {"instance_prompt": "a photo of sks mug", "with_prior_preservation": False, "resolution": 32,
                       "train_text_encoder": True, "validation_steps": 2, "validation_inference_steps": 2},
        "training": {"output_dir": str(root / "run"), "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                     "save_steps": 1, "eval_steps": None},
    })
    done = train(config)
    assert done.status == "ok", done.error
    return root / "run"


def test_a_dreambooth_push_carries_both_formats_and_the_last_samples(dreambooth_run, hub):
    push_run(dreambooth_run, "someone/sks-mug", TOKEN, endpoint=hub.url)
    files = hub.files("someone/sks-mug")
    adapters = {f"{part}/{name}" for part in ("unet", "text_encoder")
                for name in ("adapter_config.json", "adapter_model.safetensors")}
    assert adapters | {"pytorch_lora_weights.safetensors", "samples/step-000002-0.png"} <= set(files)
    assert not [n for n in files if n.startswith(("checkpoint-", "data/")) or n.endswith(".jsonl")]
    assert "samples/step-000000-0.png" not in files  # only the last samples
    assert files["pytorch_lora_weights.safetensors"] == (dreambooth_run / "pytorch_lora_weights.safetensors").read_bytes()
    is_png(files["samples/step-000002-0.png"])
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "instance_prompt: a photo of sks mug" in card
    assert 'pipe.load_lora_weights("someone/sks-mug")' in card and "](samples/step-000002-0.png)" in card
    assert "| instance prompt | `a photo of sks mug` |" in card and "| text encoder LoRA | `r=8` |" in card


def test_a_merged_dreambooth_pipeline_makes_the_adapter_s_image(dreambooth_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from peft_core.inference import DiffusionInference

    folder = merge_run(dreambooth_run, tmp_path)
    assert (folder / "model_index.json").is_file() and not list(folder.rglob("*.bin"))
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    adapted = DiffusionInference("tiny-sd-random", dreambooth_run, device="cpu", dtype=torch.float32)
    base = DiffusionInference("tiny-sd-random", None, device="cpu", dtype=torch.float32)

    def image(p) -> np.ndarray:
        return p("a photo of sks mug", num_inference_steps=3, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(1)).images[0]

    expected = image(adapted.pipe)
    np.testing.assert_allclose(image(pipe), expected, atol=1e-4)
    assert np.abs(image(base.pipe) - expected).max() > 1e-3  # the adapter does change the image
