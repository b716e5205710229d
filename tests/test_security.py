"""A shared Studio keeps users apart, trusts no path from the browser, and never writes the Hub token anywhere."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gradio as gr
import pytest
import yaml
from hub_standin import HubStandIn
from test_jobs import config, wait_for
from tiny_runs import SAMPLES

from pages import api, common, dreambooth, monitor, publish_tab, test_tab, training
from peft_core import publish
from peft_core.jobs import JobRunner
from peft_core.training.events import LogEvent, read_events
from peft_core.training.run import train

TOKEN = "hf_sEcReTtOkEn0123456789ABCDEFxyz"


@pytest.fixture
def shared(tmp_path):
    common.configure(tmp_path / "runs", single_user=False)
    yield tmp_path / "runs"
    common.configure(tmp_path / "runs", single_user=True)


def seq2seq_yaml(steps: int = 2, **model) -> str:
    return yaml.safe_dump({
        "task": "seq2seq", "model": {"name_or_path": "tiny-t5-random", **model}, "method": {"name": "lora", "r": 4},
        "data": {"train": "someone/ignored", "max_length": 32},
        "training": {"output_dir": "ignored", "max_steps": steps, "batch_size": 2, "eval_steps": None},
    })


def test_a_shared_session_sees_polls_stops_and_tests_only_its_own_runs(shared, tmp_path):
    upload = {"path": str(SAMPLES / "seq2seq.jsonl")}
    job = api.start_run(seq2seq_yaml(), "alice-secret", upload)
    run_dir = Path(api.run_status(job, "alice-secret")["run_dir"])
    assert run_dir.parent.parent == shared and "alice" not in str(run_dir)
    assert re.fullmatch(r"\d{8}-\d{6}-seq2seq-tiny-t5-random-[0-9a-f]{12}", job)  # 48 random bits
    other = api.start_run(seq2seq_yaml(), "alice-secret", upload)
    assert other[-12:] != job[-12:]

    for call in (api.run_status, api.stop_run):  # bob, through the API
        with pytest.raises(gr.Error, match="no run named"):
            call(job, "bob-secret")
    with pytest.raises(ValueError, match="no run named"):  # bob, through the monitor's poll
        monitor.snapshot(job, "bob-secret")
    assert monitor.run_choices("bob-secret") == [] and monitor.attachable("bob-secret", ["seq2seq"]) is None
    with pytest.raises(gr.Error):  # no identity at all
        api.run_status(job, "")

    done = wait_for(lambda: (s := api.run_status(job, "alice-secret"))["state"] in ("ok", "failed") and s)
    assert done["state"] == "ok", done["error"]
    assert [path for _, path in test_tab.finished_runs("alice-secret")][-1] == str(run_dir)
    assert test_tab.finished_runs("bob-secret") == []  # what the Test and Publish tabs offer bob
    with pytest.raises(ValueError, match="not one of yours"):  # a run folder sent by a crafted request
        test_tab.load("bob-secret", str(run_dir), "", "", "")
    for owner in ("bob-secret", ""):  # publish, ZIP and merge check the same list
        with pytest.raises(ValueError):
            publish_tab.own_finished_run(owner, str(run_dir))
    assert publish_tab.own_finished_run("alice-secret", str(run_dir)) == str(run_dir)
    api.stop_run(other, "alice-secret")


def test_a_shared_studio_reads_no_server_paths_and_runs_no_remote_code(shared, tmp_path):
    for train_path in ("/etc/passwd", str(SAMPLES / "seq2seq.jsonl"), "../../runs"):
        text = seq2seq_yaml().replace("someone/ignored", train_path)
        with pytest.raises(gr.Error):
            api.check_config(text, "mallory")
    with pytest.raises(gr.Error, match="is not allowed here"):
        api.start_run(seq2seq_yaml(trust_remote_code=True), "mallory", {"path": str(SAMPLES / "seq2seq.jsonl")})
    with pytest.raises(gr.Error):
        api.start_run(seq2seq_yaml().replace("tiny-t5-random", str(tmp_path)), "mallory")
    assert not list(shared.glob("u-*/*"))  # nothing was started


def test_a_check_writes_nothing_where_the_config_points(shared, tmp_path, model_dirs):
    """Check unpacks an uploaded ZIP of images into a scratch folder, never into the output_dir a request names."""
    import shutil

    archive = shutil.make_archive(str(tmp_path / "shapes"), "zip", SAMPLES / "shapes")
    target = tmp_path / "not-yours"
    text = yaml.safe_dump({
        "task": "image_cls", "model": {"name_or_path": model_dirs["vit"]}, "method": {"name": "lora", "r": 4},
        "data": {"train": "uploaded"}, "training": {"output_dir": str(target), "max_steps": 2},
    })
    common.configure(tmp_path / "runs", single_user=True)  # a local model folder: single-user mode
    report = api.check_config(text, "", {"path": archive})
    assert "shapes" in report and not target.exists()


def test_trust_remote_code_is_off_by_default_and_warned_about_when_on(model_dirs, tmp_path):
    assert config(model_dirs).model.trust_remote_code is False
    common.configure(tmp_path / "runs", single_user=True)
    on = config(model_dirs, steps=1).with_overrides(["model.trust_remote_code=true",
                                                     f"training.output_dir={tmp_path / 'run'}"])
    assert "**Warning:** trust_remote_code is on" in api.check_config(on.to_yaml())
    assert train(on).status == "ok"
    warnings = [e for e in read_events(tmp_path / "run" / "events.jsonl")[0]
                if isinstance(e, LogEvent) and e.level == "warning"]
    assert len(warnings) == 1 and "trust_remote_code is on" in warnings[0].message


def test_uploaded_file_names_are_sanitised(tmp_path):
    common.configure(tmp_path / "runs", single_user=True)
    odd = tmp_path / "in" / ".. ; $(rm -rf ~) `x`\n.JSONL"
    odd.parent.mkdir()
    odd.write_text('{"text": "hello"}\n')
    kept = Path(training.data_source(str(odd), "", "local"))
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.jsonl", kept.name), kept.name
    assert kept.parent.parent == tmp_path / "runs" / "uploads" and kept.read_text() == '{"text": "hello"}\n'
    image = tmp_path / "in" / "-rf *.png"
    image.write_bytes((SAMPLES / "dreambooth" / "mug_0.png").read_bytes())
    folder = Path(dreambooth.save_uploads([str(image)], "local"))
    assert [p.name for p in folder.iterdir()] == ["rf_.png"]


def test_the_hub_token_is_in_no_file_a_run_and_its_publishing_write(model_dirs, tmp_path, monkeypatch, caplog):
    """The token as a Space secret (HF_TOKEN, inherited by the training process) and as typed in Publish."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    runner = JobRunner(tmp_path / "runs")
    try:
        job = runner.start(config(model_dirs, steps=4, save_steps=2))
        done = wait_for(lambda: (s := runner.status(job.job_id)).state in ("ok", "failed") and s)
        assert done.state == "ok", done.error
    finally:
        runner.shutdown()
    run_dir = Path(job.run_dir)
    written = [run_dir]
    with HubStandIn() as hub:
        assert publish.push_run(run_dir, "someone/adapter", TOKEN, endpoint=hub.url).endswith("someone/adapter")
        assert set(hub.authorizations) == {f"Bearer {TOKEN}"}  # it was used, and only there
        pushed = hub.files("someone/adapter")
    written.append(publish.zip_adapter(run_dir, tmp_path / "zip"))
    written.append(publish.merge_run(run_dir, tmp_path / "merged"))
    files = [p for root in written for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    assert len(files) > 10 and any(p.name == "log.txt" for p in files) and any(p.suffix == ".zip" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert not any(TOKEN.encode() in data for data in pushed.values())
    assert TOKEN not in caplog.text
