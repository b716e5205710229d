"""Run every CPU benchmark, one after the other, each in its own process; then the GPU ones if there is a GPU.

    python bench/run.py            # full: tens of minutes on 2 CPU cores
    python bench/run.py --quick    # a smoke run of each (minutes); what CI runs

Each benchmark prints its own table and one final line of ratios; this script
repeats those final lines at the end. Results go to docs/benchmarks.md by hand,
with the command, date and machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU = ["trainer.py", "lora_overhead.py", "learns.py"]
GPU = [("gpu/qlora_memory.py", []), ("gpu/dreambooth_memory.py", [])]


def run(script: str, extra: list[str]) -> str:
    """Run one benchmark; its last output line (the ratios), or why it failed."""
    print(f"\n=== {script} {' '.join(extra)}", flush=True)
    started = time.time()
    process = subprocess.run([sys.executable, str(HERE / script), *extra], stdout=subprocess.PIPE, text=True,
                             check=False)
    print(process.stdout, end="", flush=True)
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    took = f"({time.time() - started:.0f} s)"
    if process.returncode != 0 or not lines:
        return f"{script}: FAILED with exit code {process.returncode} {took}"
    return f"{lines[-1]} {took}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version of each (checks they run)")
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    finals = [run(script, extra) for script in CPU]
    import torch

    if torch.cuda.is_available():
        finals += [run(script, ["--tiny"] if args.quick else more) for script, more in GPU]
    else:
        finals.append("gpu: skipped (no CUDA GPU here; see bench/gpu/)")
    print("\n" + "\n".join(finals))
    return 1 if any("FAILED" in line for line in finals) else 0


if __name__ == "__main__":
    sys.exit(main())
