"""Publishing a finished run: push it to the Hub with a model card, ZIP it, or merge it into its base model.

Everything starts from a run directory written by ``training.run.train``.
Only the final adapter travels (never checkpoints, the data copies under
``data/``, or the event log), next to ``training_config.yaml`` and a README
card made from the run's own config and events (``peft_core.model_card``).

The Hub token is handed to ``huggingface_hub`` and nowhere else: it is never
written to a file, logged, put in a card, or quoted in an error message.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from peft_core import hub
from peft_core.model_card import DIFFUSERS_LORA_FILE, card_for_record
from peft_core.run_config import RunConfig
from peft_core.training.events import DoneEvent, EvalEvent, LogEvent, SampleEvent, StepEvent, read_events

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DREAMBOOTH_PARTS = ("unet", "text_encoder")
LABELS_FILE = "labels.json"
CLASSIFICATION_TASKS = ("seq_cls", "token_cls", "image_cls")
DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
_ROWS_LINE = re.compile(r"^training on (\d+) rows \((\w+), ([^)]*)\)")  # run.train's first log line


class PublishError(ValueError):
    """A run that cannot be published, or a push the Hub refused; ``code`` lets the UI word it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunRecord:
    """What a run directory says about its run: config, loss curve, evaluations, samples, end."""

    run_dir: Path
    config: RunConfig
    losses: dict[int, float]  # step -> loss; a resumed run repeats steps, the later value wins
    evals: list[EvalEvent]
    samples: SampleEvent | None  # the last samples made
    done: DoneEvent | None  # the last end, None while the first attempt still runs
    total_steps: int | None
    rows_used: int | None
    precision: str | None  # what "auto" became, and the device: from the run's first log line
    device: str | None
    running: bool  # steps were logged after the last end (a resumed run is going on)


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """The run in ``run_dir``; ``PublishError`` when it is not a run directory."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise PublishError(f"{path} is not a run folder (it has no config.yaml); pick a run made by PEFT Studio",
                           "not_a_run")
    config = RunConfig.from_yaml(path / "config.yaml")
    events, _ = read_events(path / "events.jsonl")
    record = RunRecord(path, config, {}, [], None, None, None, None, None, None, running=False)
    for event in events:
        if isinstance(event, StepEvent):
            record.losses[event.step] = event.loss
            record.total_steps = event.total
        elif isinstance(event, EvalEvent):
            record.evals.append(event)
        elif isinstance(event, SampleEvent):
            record.samples = event
        elif isinstance(event, LogEvent) and (match := _ROWS_LINE.match(event.message)):
            record.rows_used, record.precision, record.device = int(match[1]), match[2], match[3]
        if isinstance(event, DoneEvent):
            record.done, record.running = event, False
        else:
            record.running = record.done is not None  # a resumed attempt has started since
    return record


def check_finished(record: RunRecord) -> list[str]:
    """The adapter's files (relative paths) of a run that ended with one; else a PublishError saying why."""
    name = record.run_dir.name
    if record.done is None or record.running:
        raise PublishError(f"run {name!r} has not finished yet; wait for it to end (or stop it) before publishing",
                           "unfinished")
    if record.done.status == "failed":
        raise PublishError(f"run {name!r} failed ({record.done.error}); there is no adapter to publish; "
                           "fix the problem and train again", "failed")
    files = adapter_files(record)
    main = "unet/" if record.config.task == "dreambooth" else ""
    if not all(f"{main}{n}" in files for n in ADAPTER_FILES):
        raise PublishError(f"run {name!r} has no final adapter ({main}adapter_config.json and "
                           f"{main}adapter_model.safetensors are missing); train it to the end, or stop it so it "
                           "saves one", "no_adapter")
    return files


def adapter_files(record: RunRecord) -> list[str]:
    """The final adapter's files present in the run (relative paths): what a download or a push carries."""
    names = [*ADAPTER_FILES, DIFFUSERS_LORA_FILE, LABELS_FILE]
    names += [f"{part}/{n}" for part in DREAMBOOTH_PARTS for n in ADAPTER_FILES]
    return [n for n in names if (record.run_dir / n).is_file()]


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` stripped, if it is of the form user-or-org/name; else a PublishError showing the form."""
    text = (repo_id or "").strip() if isinstance(repo_id, str) else ""
    parts = text.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts) or ".." in text or "--" in text:
        raise PublishError(
            f"repo id {text!r} is not of the form 'your-username/model-name' (letters, digits, '-', '_' and '.'; "
            "no spaces; at most 96 characters each side)", "bad_repo_id")
    if parts[1].endswith(".git"):
        raise PublishError(f"repo id {text!r} must not end in .git; drop the suffix", "bad_repo_id")
    return text


# -- model card (written by peft_core.model_card) -------------------------------------------


def model_card_for_run(run_dir: str | os.PathLike, repo_id: str | None) -> tuple[str, dict[str, bytes]]:
    """README.md text for the run, and the files it shows: {"loss.png": ..., "samples/x.png": ...}.

    ``repo_id`` None: a card for a downloaded folder (the snippets load from a local path).
    """
    return card_for_record(read_run(run_dir), repo_id)


# -- push -----------------------------------------------------------------------------------


def push_run(run_dir: str | os.PathLike, repo_id: str, token: str | None, private: bool = False,
             endpoint: str | None = None, headings: dict[str, str] | None = None) -> str:
    """Upload the run's adapter, card and ``training_config.yaml`` to ``repo_id`` (created if needed); its URL.

    ``endpoint`` defaults to $HF_ENDPOINT (read now, not at import), else the public Hub.
    """
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    token = _check_token(token)
    record = read_run(run_dir)
    files = check_finished(record)
    card, extra = card_for_record(record, repo_id, headings)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="peft-publish-") as folder:
        _stage(record, files, card, extra, Path(folder), config_name="training_config.yaml")
        try:
            api = HfApi(endpoint=endpoint, token=token)
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder,
                              commit_message=f"Upload {record.config.method['name']} adapter with PEFT Studio")
        except Exception as exc:  # noqa: BLE001  every failure becomes a message a person can act on, without the token
            raise PublishError(*_explain(exc, repo_id, endpoint, token)) from None
    logger.info("pushed run %s to %s", record.run_dir.name, repo_id)
    return str(url)


def _check_token(token: str | None) -> str | None:
    """The token without surrounding whitespace (a pasted newline); None: huggingface_hub's saved login."""
    token = token.strip() if isinstance(token, str) else token
    if token and not re.fullmatch(r"[\x21-\x7e]+", token):  # never echoed: it may be a real token
        raise PublishError(f"the token has spaces or unusual characters in it; copy it again from {TOKENS_PAGE}",
                           "bad_token")
    return token or None


def _stage(record: RunRecord, files: list[str], card: str, extra: dict[str, bytes], folder: Path,
           config_name: str) -> None:
    """Lay out what is published: adapter files, the run config, the card and its images."""
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.run_dir / rel, folder / rel)
    shutil.copyfile(record.run_dir / "config.yaml", folder / config_name)
    (folder / "README.md").write_text(card, encoding="utf-8")
    for rel, data in extra.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def _explain(exc: Exception, repo_id: str, endpoint: str, token: str | None) -> tuple[str, str]:
    """(message, code) for a failed push; the token is cut out of anything quoted."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    namespace = repo_id.split("/")[0]
    first = _scrub(hub._first_line(exc), token)
    if type(exc).__name__ == "OfflineModeIsEnabled":
        return ("HF_HUB_OFFLINE is set, so nothing can be sent to the Hub; unset it and restart to publish",
                "offline")
    if status == 401:
        return (f"the Hub refused the token (401 Unauthorized); create a write token at {TOKENS_PAGE} "
                "and paste it here"), "bad_token"
    if status == 403:
        return (f"the token may not write to {namespace!r} (403 Forbidden): it is read-only or has no access to "
                f"that organization; use a token with write access ({TOKENS_PAGE}) or your own username"), "forbidden"
    if status is not None:
        return f"the Hub answered {status} for {repo_id}: {first}", "hub_error"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, OSError) or names & {"TransportError", "RequestError", "ConnectionError", "Timeout"}:
        return (f"could not reach the Hub at {endpoint} ({type(exc).__name__}: {first}); check the internet "
                "connection (and HF_ENDPOINT or proxy settings) and try again"), "network"
    return f"the upload to {repo_id} failed ({type(exc).__name__}: {first})", "hub_error"


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


# -- download ------------------------------------------------------------------------------


def zip_adapter(run_dir: str | os.PathLike, dest_dir: str | os.PathLike,
                headings: dict[str, str] | None = None) -> Path:
    """``dest_dir/<run>-adapter.zip`` with the adapter, config.yaml, labels and card; never overwrites (-2, -3...)."""
    record = read_run(run_dir)
    files = check_finished(record)
    card, extra = card_for_record(record, None, headings)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peft-zip-") as folder:
        _stage(record, files, card, extra, Path(folder), config_name="config.yaml")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                archive.write(path, path.relative_to(folder).as_posix())
    for index in range(1, 1000):
        target = dest / f"{record.run_dir.name}-adapter{'' if index == 1 else f'-{index}'}.zip"
        try:
            with open(target, "xb") as fh:  # "x": fails rather than overwrite, even against a racing writer
                fh.write(buffer.getvalue())
            return target
        except FileExistsError:
            continue
    raise PublishError(f"{dest} already holds 999 ZIPs of run {record.run_dir.name}; clear some out", "dest_full")


# -- merge -----------------------------------------------------------------------------------


def merge_run(run_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """The base model with the adapter folded in, saved as a full model under ``dest_dir/<run>-merged``.

    Text and vision runs: ``save_pretrained`` (safetensors) plus the tokenizer or
    image processor; DreamBooth: the whole diffusers pipeline. An existing folder
    is never touched: the name gets -2, -3... Prompt-learning adapters cannot merge.
    """
    from peft_core.registry import get_method

    record = read_run(run_dir)
    check_finished(record)
    spec = get_method(record.config.method["name"])
    if not spec.mergeable:
        raise PublishError(f"{spec.title} adapters add virtual tokens, not weights, so they cannot be merged into "
                           "the model; download the adapter (ZIP) and load it with PeftModel.from_pretrained",
                           "not_mergeable")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{record.run_dir.name}-merging-", dir=dest))
    try:
        if record.config.task == "dreambooth":
            _merge_diffusion(record, staging)
        else:
            _merge_transformers(record, staging)
        return _claim(staging, dest, f"{record.run_dir.name}-merged")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _claim(staging: Path, dest: Path, name: str) -> Path:
    """Rename the finished folder to ``name`` (or name-2, ...) without replacing anything that exists."""
    for index in range(1, 1000):
        target = dest / (name if index == 1 else f"{name}-{index}")
        if target.exists():
            continue
        try:
            target.mkdir()  # claims the name; a racing writer gets FileExistsError
        except FileExistsError:
            continue
        os.replace(staging, target)  # replaces only the empty folder just made
        return target
    raise PublishError(f"{dest} already holds 999 merged copies of {name}; clear some out", "dest_full")


def _merge_transformers(record: RunRecord, folder: Path) -> None:
    import torch
    import transformers

    from peft_core.models import load_base_model
    from peft_core.peft_model import PeftModel
    from peft_core.presets import resolve_model
    from peft_core.tasks import make_task
    from peft_core.training.run import read_labels

    config = dataclasses.replace(record.config, model=dataclasses.replace(record.config.model, quantization="none"))
    task = make_task(config)
    processor = task.load_processor()
    if config.task in CLASSIFICATION_TASKS:
        labels = read_labels(record.run_dir)
        if not labels:
            raise PublishError(f"run {record.run_dir.name} has no {LABELS_FILE}, so its classes are unknown; "
                               "train it again with this version to merge it", "no_labels")
        task.labels = labels  # the classification tasks build their head from these
    source = resolve_model(config.model.name_or_path)
    saved_dtype = getattr(transformers.AutoConfig.from_pretrained(source), "dtype", None)
    base = load_base_model(getattr(transformers, task.auto_class), config.model.name_or_path, precision="fp32",
                           device=torch.device("cpu"), trust_remote_code=config.model.trust_remote_code,
                           **task.model_kwargs())
    merged = PeftModel.from_pretrained(base, record.run_dir).merge_and_unload()  # merged in fp32, saved as the base was
    if isinstance(saved_dtype, torch.dtype) and saved_dtype in (torch.float16, torch.bfloat16):
        merged = merged.to(saved_dtype)
    merged.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _merge_diffusion(record: RunRecord, folder: Path) -> None:
    import torch

    from peft_core.inference import DiffusionInference

    inference = DiffusionInference(record.config.model.name_or_path, record.run_dir, device="cpu",
                                   dtype=torch.float32)
    inference.merge()
    inference.pipe.save_pretrained(folder, safe_serialization=True)
