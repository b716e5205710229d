"""Tasks, one file each, registered by the name a run config uses."""

from __future__ import annotations

from peft_core.run_config import RunConfig
from peft_core.tasks.base import DataReport, Task


def task_classes() -> dict[str, type[Task]]:
    from peft_core.tasks.causal_lm import CausalLMTask
    from peft_core.tasks.dreambooth import DreamBoothTask
    from peft_core.tasks.image_cls import ImageClsTask
    from peft_core.tasks.seq2seq import Seq2SeqTask
    from peft_core.tasks.seq_cls import SeqClsTask
    from peft_core.tasks.token_cls import TokenClsTask

    return {cls.name: cls for cls in (CausalLMTask, Seq2SeqTask, SeqClsTask, TokenClsTask, ImageClsTask, DreamBoothTask)}


def make_task(config: RunConfig) -> Task:
    classes = task_classes()
    if config.task not in classes:
        raise ValueError(f"task {config.task!r} is not available; choose one of: {', '.join(sorted(classes))}")
    return classes[config.task](config)


__all__ = ["DataReport", "Task", "make_task", "task_classes"]
