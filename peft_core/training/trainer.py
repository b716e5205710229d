"""The training loop: accelerate, gradient accumulation, clipping, schedules, eval, checkpoints, resume.

``Trainer(task, model, config, ...).fit()`` trains a ``PeftModel`` on the rows
a task encoded. Every optimizer step's loss is the mean over all the items
(trained tokens, or examples) of its micro-batches, so accumulation, packing
and several processes all give the loss one big batch would. A checkpoint
holds the adapter (loadable as it is) plus the optimizer, scheduler, random
generators and data position, so a resumed run repeats an uninterrupted one
step for step. A stop request is honoured between optimizer steps and leaves
a loadable adapter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_core.run_config import RunConfig
from peft_core.tasks.base import Features, Task
from peft_core.training import checkpoint as ckpt
from peft_core.training.batching import epoch_batches
from peft_core.training.events import (
    DoneEvent,
    EstimateEvent,
    EvalEvent,
    Event,
    SampleEvent,
    StepEvent,
    device_memory_gb,
    process_memory,
)
from peft_core.training.state_io import load_state, save_state
from peft_core.weights import training_layout

logger = logging.getLogger(__name__)

STOP_FILE = "STOP"  # a file of this name in the run directory asks the run to stop
MEASURE_AFTER = 3  # steps after which the peak memory is measured (the first ones allocate the optimizer state)


class Trainer:
    def __init__(
        self,
        task: Task,
        model: nn.Module,
        config: RunConfig,
        train_rows: list[Features],
        eval_rows: list[Features] | None,
        accelerator: Any,
        emit: Callable[[Event], None] = lambda event: None,
        stop: Callable[[], bool] = lambda: False,
        estimate: dict[str, float] | None = None,  # {} when there is none (DreamBooth)
    ) -> None:
        self.task, self.model, self.config = task, model, config
        self.train_rows, self.eval_rows = train_rows, eval_rows or []
        self.accelerator = accelerator
        self.emit = emit if accelerator.is_main_process else (lambda event: None)
        self._stop = stop
        self.estimate = estimate  # the memory estimate, repeated with the measured peak after a few steps
        self.run_dir = config.training.output_dir
        settings = config.training
        batches = math.ceil(len(train_rows) / settings.batch_size / accelerator.num_processes)
        self.steps_per_epoch = max(1, batches // settings.gradient_accumulation_steps)
        self.total_steps = settings.max_steps or math.ceil(settings.num_epochs * self.steps_per_epoch)
        self.lengths = [task.length(row) for row in train_rows]
        self.state = ckpt.TrainerState(0, 0, 0, None, None, 0, {"stale_evals": 0})

    # -- set-up ------------------------------------------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _optimizer(self) -> torch.optim.Optimizer:
        settings = self.config.training
        params = self._trainable()
        if not params:
            raise ValueError("the model has no trainable parameter; is the adapter loaded for inference only?")
        if settings.optimizer == "adamw_8bit":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from transformers import get_scheduler

        settings = self.config.training
        return get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.warmup_steps,
                             num_training_steps=self.total_steps)

    # -- data ----------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[list[Features]]:
        """Training batches from the saved data position on, epoch after epoch."""
        settings = self.config.training
        while True:
            plan = epoch_batches(self.lengths, settings.batch_size, settings.seed, self.state.epoch,
                                 group_by_length=self.task.groups_by_length,
                                 shards=self.accelerator.num_processes, shard=self.accelerator.process_index)
            while self.state.batches_seen_in_epoch < len(plan):
                indices = plan[self.state.batches_seen_in_epoch]
                self.state.batches_seen_in_epoch += 1
                yield [self.train_rows[i] for i in indices]
            self.state.epoch += 1
            self.state.batches_seen_in_epoch = 0

    def _eval_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        size = self.config.training.batch_size
        order = sorted(range(len(self.eval_rows)), key=lambda i: self.task.length(self.eval_rows[i]))
        mine = order[self.accelerator.process_index::self.accelerator.num_processes]
        for start in range(0, len(mine), size):
            yield self._to_device(self.task.collate([self.eval_rows[i] for i in mine[start:start + size]]))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # -- one optimizer step ---------------------------------------------------------------
    def _step(self, stream: Iterator[list[Features]], optimizer, scheduler) -> tuple[float, int, float | None]:
        """Forward/backward over the accumulated micro-batches, then the update; returns (loss, tokens, grad norm)."""
        accelerator, task = self.accelerator, self.task
        micro = [next(stream) for _ in range(self.config.training.gradient_accumulation_steps)]
        batches = [self._to_device(task.collate(features)) for features in micro]
        tokens = sum(task.count_tokens(features) for features in micro)
        local_items = sum(task.count_items(b) for b in batches)
        items = int(accelerator.reduce(torch.tensor(local_items, device=accelerator.device), "sum"))
        scale = accelerator.num_processes  # DDP averages gradients; undo it so the loss is a mean over all items
        self.model.train()
        if self.config.model.quantization == "4bit":
            training_layout(self.model)  # an evaluation may have left bitsandbytes' inference-only layout
        total = 0.0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(self.model)
            with sync, accelerator.autocast():
                loss = task.loss(self.model, batch, items) * scale
                extra = self._unwrapped().base_model.regularization_loss() if last else None
                total += float(loss.detach()) / scale
                if extra is not None:
                    loss = loss + extra
            accelerator.backward(loss)
        grad_norm = None
        if self.config.training.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(self._trainable(), self.config.training.max_grad_norm)
            grad_norm = float(norm) if norm is not None else None  # DeepSpeed clips inside its engine
        optimizer.step()
        self.state.global_step += 1
        self._unwrapped().on_optimizer_step(self.state.global_step)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = accelerator.reduce(torch.tensor(total, device=accelerator.device), "sum")
        return float(loss_sum), tokens * accelerator.num_processes, grad_norm

    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> DoneEvent:
        if self.accelerator.distributed_type.value == "DEEPSPEED" and self.config.training.gradient_accumulation_steps > 1:
            raise ValueError("under DeepSpeed, peft_core steps once per batch: set training.gradient_accumulation_steps "
                             "to 1 and raise batch_size (or use more GPUs) for the same effective batch")
        optimizer = self._optimizer()
        scheduler = self._scheduler(optimizer)
        self.model, optimizer = self.accelerator.prepare(self.model, optimizer)
        if self.config.training.resume_from:
            self._resume(self.config.training.resume_from, optimizer, scheduler)
        else:
            seed_everything(self.config.training.seed)
            if self.eval_rows:  # where the run starts from, for comparison
                self.emit(EvalEvent(step=0, metrics=self.evaluate(), details=self.task.eval_details()))
            if self.task.sample_every:
                self._sample()
        stream = self._micro_batches()
        started, last_log, tokens_since = time.time(), time.time(), 0
        status = "ok"
        while self.state.global_step < self.total_steps:
            if self.stop_requested():
                status = "stopped"
                break
            loss, tokens, grad_norm = self._step(stream, optimizer, scheduler)
            tokens_since += tokens
            step = self.state.global_step
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {step}; lower the learning rate")
            if step % self.config.training.logging_steps == 0 or step == self.total_steps:
                now = time.time()
                self._log_step(loss, scheduler, grad_norm, tokens_since / max(now - last_log, 1e-9), now - started)
                last_log, tokens_since = now, 0
            if step == min(MEASURE_AFTER, self.total_steps):
                self.emit(EstimateEvent(step=step, estimate=self.estimate or {}, device=device_memory_gb()[0],
                                        measured_peak_gb=process_memory(self.accelerator.device)[1]))
            if self._eval_due(step) and self._evaluate_and_track() == "early_stop":
                break
            if self.task.sample_every and (step % self.task.sample_every == 0 or step == self.total_steps):
                self._sample()
            if self._save_due(step):
                self._save_checkpoint(optimizer, scheduler)
        if status == "ok" and self.eval_rows and not self._evaluated_at(self.state.global_step):
            self._evaluate_and_track()
        self._save_checkpoint(optimizer, scheduler)
        self._save_adapter(self.run_dir)
        return DoneEvent(status=status, output_dir=self.run_dir)

    def _sample(self) -> None:
        """Samples from the model as it is now (the main process makes them; the others wait)."""
        if self.accelerator.is_main_process:
            images, prompts = self.task.sample(self._unwrapped(), self.state.global_step, self.run_dir)
            self.emit(SampleEvent(step=self.state.global_step, images=images, texts=prompts))
        self.accelerator.wait_for_everyone()

    def stop_requested(self) -> bool:
        asked = self._stop() or os.path.exists(os.path.join(self.run_dir, STOP_FILE))
        flag = torch.tensor(int(asked), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum"))  # every process stops at the same step

    def _log_step(self, loss: float, scheduler, grad_norm: float | None, tokens_per_s: float, elapsed: float) -> None:
        step = self.state.global_step
        allocated, peak = process_memory(self.accelerator.device)
        eta = elapsed / step * (self.total_steps - step) if step else None
        epoch = step / self.steps_per_epoch
        self.emit(StepEvent(step=step, total=self.total_steps, loss=loss, lr=float(scheduler.get_last_lr()[0]),
                            tokens_per_s=tokens_per_s, mem_allocated_gb=allocated, mem_peak_gb=peak,
                            elapsed_s=elapsed, eta_s=eta, epoch=epoch, grad_norm=grad_norm))

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_due(self, step: int) -> bool:
        every = self.config.training.eval_steps
        return bool(self.eval_rows) and every is not None and step % every == 0

    def _save_due(self, step: int) -> bool:
        every = self.config.training.save_steps
        return every is not None and step % every == 0 and step < self.total_steps

    def _evaluated_at(self, step: int) -> bool:
        return self.state.extra.get("last_eval_step") == step

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with self.accelerator.autocast():
            return self.task.evaluate(self.model, self._eval_batches(), combine=self._sum_over_processes)

    def _sum_over_processes(self, state: dict[str, Any]) -> dict[str, Any]:
        """Running eval totals (numbers or tensors) summed over every process."""
        if self.accelerator.num_processes == 1:
            return state
        summed = {}
        for key, value in state.items():
            tensor = self.accelerator.reduce(torch.as_tensor(value, device=self.accelerator.device), "sum")
            summed[key] = tensor.cpu() if isinstance(value, torch.Tensor) else tensor.item()
        return summed

    def _evaluate_and_track(self) -> str | None:
        """Evaluate, remember the best eval loss, and say "early_stop" when patience ran out."""
        metrics = self.evaluate()
        step = self.state.global_step
        self.state.extra["last_eval_step"] = step
        self.emit(EvalEvent(step=step, metrics=metrics, details=self.task.eval_details()))
        loss = metrics.get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return None
        if self.state.best_metric is None or loss < self.state.best_metric:
            self.state.best_metric = loss
            self.state.best_checkpoint = f"checkpoint-{step}"
            self.state.extra["stale_evals"] = 0
            self._save_adapter(os.path.join(self.run_dir, "best"))
            return None
        self.state.extra["stale_evals"] += 1
        patience = self.config.training.early_stopping_patience
        if patience is not None and self.state.extra["stale_evals"] >= patience:
            logger.info("early stopping at step %d: no better eval loss in %d evaluations", step, patience)
            return "early_stop"
        return None

    # -- saving and resuming -------------------------------------------------------------------
    def _sharded(self) -> bool:
        """DeepSpeed or FSDP: each process holds only a shard of the parameters."""
        return self.accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")

    @contextlib.contextmanager
    def _full_parameters(self):
        """Whole adapter tensors on every process while saving (a no-op unless sharded; all processes enter)."""
        kind = self.accelerator.distributed_type.value
        if kind == "DEEPSPEED":
            import deepspeed

            with deepspeed.zero.GatheredParameters(self._trainable(), modifier_rank=None):
                yield
        elif kind == "FSDP":
            from torch.distributed.fsdp import FullyShardedDataParallel

            with FullyShardedDataParallel.summon_full_params(self.model, writeback=False, offload_to_cpu=True):
                yield
        else:
            yield

    def _save_adapter(self, directory: str) -> None:
        with self._full_parameters():
            if self.accelerator.is_main_process:
                self._unwrapped().save_pretrained(directory)

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        self.accelerator.wait_for_everyone()
        model = self._unwrapped()
        sharded = self._sharded()

        def write(directory: str) -> None:
            model.save_pretrained(directory)  # a loadable PEFT adapter
            if sharded:  # the optimizer state is sharded too: such a checkpoint is an adapter, not a resume point
                return
            save_state({
                "trainable": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "method": model.base_model.training_state(),
            }, directory, "training_state")

        protect = [self.state.best_checkpoint] if self.state.best_checkpoint else []
        with self._full_parameters():
            if self.accelerator.is_main_process:
                ckpt.save_checkpoint(self.run_dir, self.state.global_step, write, self.state,
                                     keep_last=self.config.training.keep_checkpoints, protect=protect)

    def _resume(self, where: str, optimizer, scheduler) -> None:
        directory = ckpt.latest_checkpoint(self.run_dir) if where == "latest" else where
        if directory is None or not os.path.isdir(directory):
            raise ValueError(f"no checkpoint to resume from at {where!r} (looked in {self.run_dir})")
        if self._sharded():
            raise ValueError("resuming is not supported under DeepSpeed or FSDP (their optimizer state is sharded); "
                             "resume with DDP or one GPU, or start a new run from the checkpoint's adapter")
        saved = load_state(directory, "training_state")
        model = self._unwrapped()
        params = dict(model.named_parameters())
        missing = [n for n in saved["trainable"] if n not in params]
        if missing:
            raise ValueError(f"checkpoint {directory} does not match this model/method (no parameter {missing[0]})")
        with torch.no_grad():
            for name, value in saved["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        model.base_model.load_training_state(saved["method"])
        _set_rng_state(saved["rng"])
        self.state = ckpt.read_trainer_state(directory)
        logger.info("resumed from %s at step %d", directory, self.state.global_step)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
