"""Training: the loop, its state on disk, checkpoints, events and the memory estimate.

Only the light pieces are re-exported here; the loop itself is
``peft_core.training.trainer`` (imported on demand, it pulls in accelerate).
"""

from peft_core.training.checkpoint import (
    CheckpointError,
    TrainerState,
    clean_stale_temp_dirs,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
    save_checkpoint,
)
from peft_core.training.events import (
    DoneEvent,
    EstimateEvent,
    EvalEvent,
    Event,
    EventLog,
    LogEvent,
    SampleEvent,
    StepEvent,
    device_memory_gb,
    event_from_json,
    event_to_json,
    process_memory,
    read_events,
)
from peft_core.training.memory import MemoryEstimate, Suggestion, estimate_memory, fits, oom_advice, suggest_changes
from peft_core.training.state_io import load_state, save_state

__all__ = [
    "CheckpointError",
    "DoneEvent",
    "EstimateEvent",
    "EvalEvent",
    "Event",
    "EventLog",
    "LogEvent",
    "MemoryEstimate",
    "SampleEvent",
    "StepEvent",
    "Suggestion",
    "TrainerState",
    "clean_stale_temp_dirs",
    "device_memory_gb",
    "estimate_memory",
    "event_from_json",
    "event_to_json",
    "fits",
    "latest_checkpoint",
    "list_checkpoints",
    "load_state",
    "oom_advice",
    "process_memory",
    "read_events",
    "read_trainer_state",
    "save_checkpoint",
    "save_state",
    "suggest_changes",
]
