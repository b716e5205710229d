"""Running a whole training run from a ``RunConfig``: what the CLI and the job runner call.

``train(config)`` makes the run directory (``config.yaml``, ``events.jsonl``,
checkpoints, and at the end the adapter itself), and always ends with a
``DoneEvent``: "ok", "stopped", or "failed" with a message and, for running
out of memory, concrete advice. ``validate(config)`` gives the data report
and ``estimate(config)`` the memory estimate without loading any weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import torch

from peft_core.data.reasons import REASONS, Reason
from peft_core.peft_model import get_peft_model
from peft_core.run_config import RunConfig
from peft_core.tasks import DataReport, Task, make_task
from peft_core.training import memory
from peft_core.training.events import DoneEvent, EstimateEvent, Event, EventLog, LogEvent
from peft_core.training.precision import accelerate_mixed_precision, pick_device, pick_precision, upcast_trainable
from peft_core.training.trainer import MEASURE_AFTER, Trainer, seed_everything

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
REMOTE_CODE_WARNING = REASONS["remote_code"]  # Reason("remote_code", model=...) carries its code too


def encode_all(task: Task, examples: list[Any]) -> list[dict]:
    """Encode examples, counting those left with nothing to train in the report."""
    rows = []
    for example in examples:
        features = task.encode(example)
        if features is None:
            reason = Reason("nothing_to_train")
            task.report.dropped[reason] = task.report.dropped.get(reason, 0) + 1
        else:
            rows.append(features)
    return rows


def validate(config: RunConfig) -> DataReport:
    """Read and encode the data exactly as training would, and report on it (no model is loaded).

    Nothing is written to the run's folder: a ZIP of images is unpacked into a
    scratch folder that is removed afterwards (a check may name any folder).
    """
    with tempfile.TemporaryDirectory(prefix="peft-studio-check-") as scratch:
        scratch_run = dataclasses.replace(config.training, output_dir=scratch)
        task, _, _ = _read_and_encode(dataclasses.replace(config, training=scratch_run))
    return task.report


def _read_and_encode(config: RunConfig) -> tuple[Task, list, list]:
    """The task with its processor, the encoded training and eval rows, and the data report filled in."""
    task = make_task(config)
    task.load_processor()
    train, evaluation = task.read()
    train_rows = encode_all(task, train)
    if not train_rows:
        raise ValueError(f"no example of {config.data.train} has anything to train; see the data report's dropped rows")
    task.finish_report(train_rows, seed=config.training.seed)
    return task, train_rows, encode_all(task, evaluation or [])


def _weight_bits(config: RunConfig, precision: str, device: torch.device) -> int:
    quant = config.model.quantization
    if quant == "4bit":
        return 4
    if quant == "8bit":
        return 8
    return 32 if device.type == "cpu" or precision == "fp32" else 16


def estimate(config: RunConfig, device: torch.device | None = None) -> memory.MemoryEstimate:
    """How much memory the run needs, from the model's config alone (built on the meta device)."""
    if config.task == "dreambooth":
        raise ValueError("there is no memory estimate for DreamBooth yet; a run reports the peak it measured after "
                         f"{MEASURE_AFTER} steps (events.jsonl), and docs/benchmarks.md has measured peaks")
    device = device or pick_device()
    precision = pick_precision(config.training.precision, device)
    model, trainable = _meta_model(config)
    return memory.estimate_memory(model, trainable, **_estimate_kwargs(config, precision, device))


def _meta_model(config: RunConfig) -> tuple[torch.nn.Module, int]:
    """The run's model with its adapter on the meta device (no weights), and its trainable parameter count."""
    import transformers

    from peft_core.models import check_model_name, model_load_error
    from peft_core.presets import resolve_model
    from peft_core.tasks import task_classes

    task_cls = task_classes()[config.task]
    source = resolve_model(check_model_name(config.model.name_or_path))
    try:
        model_config = transformers.AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise model_load_error(config.model.name_or_path, exc) from None
    with torch.device("meta"):
        base = getattr(transformers, task_cls.auto_class).from_config(model_config)
    model = get_peft_model(base, config.method_config())
    return model, model.get_nb_trainable_parameters()[0]


def _estimate_kwargs(config: RunConfig, precision: str, device: torch.device) -> dict[str, Any]:
    return {
        "batch_size": config.training.batch_size,
        "seq_len": config.data.max_length,
        "weight_bits": _weight_bits(config, precision, device),
        "compute_bytes": 4 if precision == "fp32" else 2,
        "optimizer": config.training.optimizer,
        "gradient_checkpointing": config.model.gradient_checkpointing,
        "device_type": device.type,
    }


def _oom_advice(config: RunConfig, precision: str, device: torch.device) -> list[memory.Advice]:
    """Concrete changes that would fit, each with its estimate (plain advice if the model cannot be built)."""
    available = memory.device_memory_gb()[1]
    kwargs = _estimate_kwargs(config, precision, device)
    try:
        model, trainable = _meta_model(config)
        kwargs.update(model=model, trainable_params=trainable)
    except Exception:  # the advice must not fail the report
        logger.warning("no model for the out-of-memory advice:\n%s", traceback.format_exc())
    return memory.oom_advice(kwargs, available)


def _check_run_dir(config: RunConfig) -> None:
    """Never train over someone's finished run: a new run needs a new folder (or resume_from)."""
    run_dir = config.training.output_dir
    if config.training.resume_from or not os.path.isdir(run_dir):
        return
    taken = [n for n in (EVENTS_FILE, "adapter_model.safetensors") if os.path.exists(os.path.join(run_dir, n))]
    if taken:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(taken)}); choose another output_dir, "
            f"or set training.resume_from: latest to continue it"
        )


LABELS_FILE = "labels.json"


def _write_labels(run_dir: str, labels: list[str]) -> None:
    """The class names of a classification run, in head order (the adapter files hold only the head's weights)."""
    tmp = os.path.join(run_dir, LABELS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"labels": list(labels)}, fh, ensure_ascii=False, indent=1)
    os.replace(tmp, os.path.join(run_dir, LABELS_FILE))


def read_labels(run_dir: str | os.PathLike) -> list[str] | None:
    """The labels a classification run wrote, or None."""
    path = os.path.join(run_dir, LABELS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh)["labels"])


def build(config: RunConfig, accelerator: Any, precision: str) -> tuple[Task, torch.nn.Module, list, list]:
    """Task, model with a fresh adapter, and the encoded training and eval rows."""
    seed_everything(config.training.seed)  # the new head and the adapter start the same on every run
    engine = accelerator.distributed_type.value
    if engine in ("DEEPSPEED", "FSDP") and config.model.quantization != "none":
        raise ValueError(f"{engine} cannot shard a {config.model.quantization} model; "
                         "launch QLoRA with DDP (configs/accelerate/ddp.yaml) or on one GPU")
    task, train_rows, eval_rows = _read_and_encode(config)
    train_rows = task.rows_for_training(train_rows, config.training.seed)
    model = task.build_model(precision, accelerator.device)
    upcast_trainable(model)
    return task, model, train_rows, eval_rows


def train(
    config: RunConfig,
    callbacks: Iterable[Callable[[Event], None]] = (),
    stop: Callable[[], bool] = lambda: False,
) -> DoneEvent:
    """Run the training described by ``config``; never raises for a failed run, returns its DoneEvent."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    run_dir = config.training.output_dir
    _check_run_dir(config)
    device = pick_device()
    precision = pick_precision(config.training.precision, device)
    # accelerate keeps one precision per process; a notebook or a test session runs several runs, each
    # with its own (the process group of a distributed launch, PartialState, is kept)
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=accelerate_mixed_precision(precision), cpu=device.type == "cpu")
    log = None
    if accelerator.is_main_process:
        os.makedirs(run_dir, exist_ok=True)
        config.save_yaml(os.path.join(run_dir, CONFIG_FILE))
        log = EventLog(os.path.join(run_dir, EVENTS_FILE))
    callbacks = list(callbacks)

    def emit(event: Event) -> None:
        if log is not None:
            log.append(event)
            for callback in callbacks:
                callback(event)

    try:
        if config.model.trust_remote_code:
            emit(LogEvent(level="warning", message=REMOTE_CODE_WARNING.format(model=config.model.name_or_path)))
        estimate_now = estimate(config, accelerator.device) if config.task != "dreambooth" else None
        if estimate_now is not None:  # DreamBooth: only the peak measured after the first steps
            emit(EstimateEvent(step=0, estimate=estimate_now.as_dict(), measured_peak_gb=None,
                               device=memory.device_memory_gb()[0]))
        task, model, train_rows, eval_rows = build(config, accelerator, precision)
        if accelerator.is_main_process and getattr(task, "labels", None):
            _write_labels(run_dir, task.labels)
        emit(LogEvent(level="info", message=f"training on {len(train_rows)} rows ({precision}, {accelerator.device})"))
        trainer = Trainer(task, model, config, train_rows, eval_rows, accelerator, emit=emit, stop=stop,
                          estimate=estimate_now.as_dict() if estimate_now else {})
        done = trainer.fit()
    except torch.OutOfMemoryError:
        advice = _oom_advice(config, precision, device)
        done = DoneEvent(status="failed", output_dir=run_dir, error="out of memory", error_code="oom", advice=advice,
                         advice_keys=[line.to_dict() for line in advice])
    except (ValueError, OSError, FloatingPointError) as exc:
        done = DoneEvent(status="failed", output_dir=run_dir, error=str(exc), error_code=getattr(exc, "code", None))
    except Exception as exc:  # a bug: keep the trace in the log, the message in the event
        logger.error("run %s failed:\n%s", run_dir, traceback.format_exc())
        done = DoneEvent(status="failed", output_dir=run_dir, error=f"{type(exc).__name__}: {exc}", error_code="internal")
    emit(done)
    return done
