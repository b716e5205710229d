"""``python -m peft_core train|validate|estimate CONFIG.yaml`` (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import logging
import sys

from peft_core.run_config import RunConfig


def _load(args: argparse.Namespace) -> RunConfig:
    config = RunConfig.from_yaml(args.config)
    return config.with_overrides(args.set) if args.set else config


def _progress_callback():
    from tqdm.auto import tqdm

    from peft_core.training.events import DoneEvent, EvalEvent, LogEvent, StepEvent

    bar = None

    def on_event(event) -> None:
        nonlocal bar
        if isinstance(event, StepEvent):
            if bar is None:
                bar = tqdm(total=event.total, unit="step", dynamic_ncols=True)
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", tok_s=f"{event.tokens_per_s:.0f}")
        elif isinstance(event, EvalEvent):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in event.metrics.items())
            (bar.write if bar else print)(f"step {event.step}: {shown}")
        elif isinstance(event, LogEvent):
            (bar.write if bar else print)(event.message)
        elif isinstance(event, DoneEvent) and bar is not None:
            bar.close()

    return on_event


def cmd_train(args: argparse.Namespace) -> int:
    from peft_core.training.run import train

    done = train(_load(args), callbacks=[_progress_callback()])
    if done.status == "failed":
        print(f"training failed: {done.error}", file=sys.stderr)
        for line in done.advice or []:
            print(f"  - {line}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:  # one line for the run, not one per process
        print(f"training {done.status}; adapter in {done.output_dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from peft_core.training.run import validate

    report = validate(_load(args))
    print(f"{report.source}: {report.format}, {report.rows} rows, {report.used} train, {report.eval_rows} eval")
    for reason, count in report.dropped.items():
        print(f"  dropped {count}: {reason}")
    if report.labels:
        print("  labels: " + ", ".join(f"{k} ({v})" for k, v in report.labels.items()))
    if report.max_length:  # text: how long the examples are, in tokens
        print(f"  truncated at {report.max_length} tokens: {report.truncated}")
        bins = list(report.length_histogram)
        while bins and bins[-1][2] == 0:
            bins.pop()
        print("  tokens         examples")
        for low, high, count in bins:
            print(f"  {low:>5}-{high:<6}  {'#' * min(count, 60)} {count}")
    for i in range(len(report.examples)):
        print(f"--- example {i + 1} (trained part between ⟦ ⟧)\n{report.marked(i)}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from peft_core.training import memory
    from peft_core.training.run import estimate

    config = _load(args)
    result = estimate(config)
    name, available = memory.device_memory_gb()
    for field in ("weights_gb", "adapter_gb", "gradients_gb", "optimizer_gb", "activations_gb", "overhead_gb"):
        print(f"  {field[:-3]:<12} {getattr(result, field):8.2f} GB")
    print(f"  {'total':<12} {result.total_gb:8.2f} GB on {name} ({available:.1f} GB available)")
    ok, advice = memory.fits(result, available)
    print("  fits" if ok else "  does not fit; try:\n" + "\n".join(f"    - {a}" for a in advice))
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peft_core", description="Parameter-efficient fine-tuning runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("train", cmd_train, "train from a run config"),
                             ("validate", cmd_validate, "report on the data, no training"),
                             ("estimate", cmd_estimate, "estimate the memory the run needs")):
        command = sub.add_parser(name, help=text)
        command.add_argument("config", help="a run config YAML (a run's config.yaml works too)")
        command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="override a setting, e.g. --set training.max_steps=10")
        command.set_defaults(func=func)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
