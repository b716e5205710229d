"""DreamBooth on a tiny Stable Diffusion: training, samples, diffusers-loadable output, interop, bad uploads."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from PIL import Image, ImageDraw

from peft_core import PeftModel
from peft_core.data import DataError
from peft_core.diffusion import load_components
from peft_core.inference import DiffusionInference
from peft_core.run_config import RunConfig
from peft_core.training.events import DoneEvent, SampleEvent, StepEvent, read_events
from peft_core.training.run import train, validate

BASE = "tiny-sd-random"
PROMPT = "a photo of sks dog"


def instance_images(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (80 + 8 * i, 64), (200, 180 - 30 * i, 40))
        ImageDraw.Draw(image).ellipse((10 + 3 * i, 8, 60, 56), fill=(30, 60, 200))
        image.save(folder / f"dog{i}.png")
    (folder / "dog0.txt").write_text("a photo of sks dog on grass")
    return folder


def config_for(data: Path, output_dir: Path, method: dict | None = None, **dreambooth) -> RunConfig:
    return RunConfig.from_dict({
        "task": "dreambooth",
        "model": {"name_or_path": BASE},
        "method": method or {"name": "lora", "r": 4, "lora_alpha": 8},
        "data": {"train": str(data)},
        "dreambooth": {"instance_prompt": PROMPT, "class_prompt": "a photo of dog", "num_class_images": 3,
                       "class_inference_steps": 2, "resolution": 32, "validation_steps": 3,
                       "validation_inference_steps": 2, **dreambooth},
        "training": {"output_dir": str(output_dir), "max_steps": 6, "batch_size": 2, "learning_rate": 1e-3,
                     "save_steps": 3, "eval_steps": None},
    })


@pytest.fixture(autouse=True)
def _class_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr("peft_core.tasks.dreambooth.class_cache_dir",
                        lambda: tmp_path_factory.getbasetemp() / "class-images")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One run with prior preservation, a text-encoder LoRA, SNR weighting and noise offset."""
    root = tmp_path_factory.mktemp("dreambooth")
    import peft_core.tasks.dreambooth as db

    original = db.class_cache_dir
    db.class_cache_dir = lambda: root / "class-images"
    try:
        config = config_for(instance_images(root / "images"), root / "run", train_text_encoder=True,
                            snr_gamma=5.0, noise_offset=0.05)
        done = train(config)
    finally:
        db.class_cache_dir = original
    assert done.status == "ok", done.error
    return root / "run"


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    hidden = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10]), encoder_hidden_states=hidden).sample


def image(pipe, seed: int = 3) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_a_run_trains_samples_and_writes_every_output(trained):
    events = read_events(trained / "events.jsonl")[0]
    losses = [e.loss for e in events if isinstance(e, StepEvent)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    samples = [e for e in events if isinstance(e, SampleEvent)]
    assert [e.step for e in samples] == [0, 3, 6] and samples[0].texts == [PROMPT]
    for event in samples:
        assert all((trained / path).is_file() for path in event.images)
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "ok"
    for name in ("unet", "text_encoder"):
        config = json.loads((trained / name / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE
    assert (trained / "pytorch_lora_weights.safetensors").is_file()
    assert (trained / "checkpoint-3" / "unet" / "adapter_model.safetensors").is_file()
    # the step-0 sample is the base model's, the last one the adapter's
    first, last = (np.asarray(Image.open(trained / s.images[0])) for s in (samples[0], samples[-1]))
    assert not np.array_equal(first, last)


def test_diffusers_load_lora_weights_makes_exactly_our_image(trained):
    ours = DiffusionInference(BASE, trained)
    assert set(ours.adapters) == {"unet", "text_encoder"}
    expected = image(ours.pipe)
    pipe = load_components(BASE, torch.float32, torch.device("cpu")).pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = image(pipe)
    pipe.load_lora_weights(str(trained))  # the file as it is, with diffusers' own loader (and the real peft)
    np.testing.assert_allclose(image(pipe), expected, atol=1e-5)
    assert np.abs(base - expected).max() > 1e-3  # and the adapter does change the image
    # the same seed gives the same image; merging changes nothing but the speed
    assert np.array_equal(np.asarray(ours.generate(PROMPT, seed=3, num_inference_steps=4)[0]),
                          np.asarray(ours.generate(PROMPT, seed=3, num_inference_steps=4)[0]))
    ours.merge()
    np.testing.assert_allclose(image(ours.pipe), expected, atol=1e-4)


def test_our_unet_adapter_loads_in_peft_and_peft_s_loads_here(trained, tmp_path):
    reference = load_components(BASE, torch.float32, torch.device("cpu"))
    ours = PeftModel.from_pretrained(load_components(BASE, torch.float32, torch.device("cpu")).unet, trained / "unet")
    theirs = peft.PeftModel.from_pretrained(reference.unet, str(trained / "unet"))
    torch.testing.assert_close(unet_output(theirs), unet_output(ours), rtol=1e-5, atol=1e-5)

    torch.manual_seed(1)
    unet = load_components(BASE, torch.float32, torch.device("cpu")).unet
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                             init_lora_weights=False)
    made_by_peft = peft.get_peft_model(unet, config)
    made_by_peft.save_pretrained(str(tmp_path / "peft-unet"))
    loaded = DiffusionInference(BASE, tmp_path / "peft-unet")  # a bare UNet adapter folder
    assert set(loaded.adapters) == {"unet"}
    torch.testing.assert_close(unet_output(loaded.components.unet), unet_output(made_by_peft), rtol=1e-5, atol=1e-5)


def test_class_images_are_made_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr("peft_core.tasks.dreambooth.class_cache_dir", lambda: tmp_path / "cache")
    images = instance_images(tmp_path / "images", count=3)
    assert train(config_for(images, tmp_path / "a", validation_steps=None, num_class_images=2)).status == "ok"
    [done] = list((tmp_path / "cache").rglob("done.json"))
    assert len(list(done.parent.glob("*.png"))) == 2

    def no_generation(*args, **kwargs):
        raise AssertionError("class images were made again")

    monkeypatch.setattr("diffusers.StableDiffusionPipeline.__call__", no_generation)
    assert train(config_for(images, tmp_path / "b", validation_steps=None, num_class_images=2)).status == "ok"
    # another prompt is another set
    done = train(config_for(images, tmp_path / "c", validation_steps=None, num_class_images=2, class_prompt="a cat"))
    assert done.status == "failed" and "class images were made again" in done.error


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    images = instance_images(tmp_path / "images")
    straight = config_for(images, tmp_path / "straight", validation_steps=None)
    assert train(straight).status == "ok"
    stopped = config_for(images, tmp_path / "resumed", validation_steps=None)
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    assert train(stopped, stop=stop_after_three).status == "stopped"
    resumed = stopped.with_overrides(["training.resume_from=latest"])
    assert train(resumed).status == "ok"

    def losses(run: str) -> list[float]:
        return [e.loss for e in read_events(tmp_path / run / "events.jsonl")[0] if isinstance(e, StepEvent)]

    assert losses("resumed") == pytest.approx(losses("straight"), rel=1e-5)


def test_loha_on_the_unet_trains_and_loads(tmp_path):
    config = config_for(instance_images(tmp_path / "images"), tmp_path / "run", method={"name": "loha", "r": 4},
                        with_prior_preservation=False, validation_steps=None)
    assert train(config).status == "ok"
    assert (tmp_path / "run" / "unet" / "adapter_config.json").is_file()
    assert not (tmp_path / "run" / "pytorch_lora_weights.safetensors").exists()  # diffusers' file is for LoRA
    loaded = DiffusionInference(BASE, tmp_path / "run")
    assert type(loaded.adapters["unet"].peft_config["default"]).__name__ == "LoHaConfig"


def _error(config: RunConfig) -> DataError:
    with pytest.raises(DataError) as caught:
        validate(config)
    return caught.value


def test_bad_uploads_are_named(tmp_path):
    folder = instance_images(tmp_path / "images", count=3)
    (folder / "notes.png").write_text("this is text, not a picture")
    err = _error(config_for(folder, tmp_path / "run"))
    assert err.code == "corrupt_image" and "notes.png" in str(err)

    (folder / "notes.png").unlink()
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    err = _error(config_for(folder, tmp_path / "run"))
    assert err.code == "image_too_small" and "dot.png" in str(err) and "1x1" in str(err)

    # the user agrees to leave bad images out: the report says which
    report = validate(config_for(folder, tmp_path / "run", skip_bad_images=True))
    assert report.used == 3 and any("dot.png" in reason for reason in report.dropped)

    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for path in sorted(folder.glob("dog*")):
            zf.write(path, f"my dog/{path.name}")
    report = validate(config_for(good, tmp_path / "zip-ok"))
    assert report.used == 3 and report.source == "good.zip"
    assert "1 of 3 images have their own caption" in report.notes[0]  # dog0.txt travelled in the ZIP

    archive = tmp_path / "escape.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.png", (folder / "dog1.png").read_bytes())
    err = _error(config_for(archive, tmp_path / "zip-run"))
    assert err.code == "zip_slip" and "../outside.png" in str(err)
    assert not (tmp_path / "outside.png").exists()


def test_estimate_says_it_has_none_for_dreambooth(capsys):
    from peft_core.cli import main

    assert main(["estimate", str(Path(__file__).resolve().parent.parent / "examples" / "dreambooth.yaml")]) == 2
    assert "no memory estimate for DreamBooth" in capsys.readouterr().err


def test_settings_are_checked():
    with pytest.raises(ValueError, match="dreambooth.class_prompt is empty"):
        RunConfig.from_dict({"task": "dreambooth", "dreambooth": {"class_prompt": ""}})
    with pytest.raises(ValueError, match="multiple of 8"):
        RunConfig.from_dict({"task": "dreambooth", "dreambooth": {"resolution": 100}})
    with pytest.raises(ValueError, match="'tiny-t5-random' is not a Stable Diffusion pipeline"):
        validate(RunConfig.from_dict({"task": "dreambooth", "model": {"name_or_path": "tiny-t5-random"},
                                      "data": {"train": "."}}))
