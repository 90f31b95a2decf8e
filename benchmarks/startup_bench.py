"""Start-up time of the command line against importing torch, in one run.

    python benchmarks/startup_bench.py [--repeats 5]

Each command runs `--repeats` times, interleaved so that a busy machine slows all of them alike; the median wall time
of each is printed with its ratio to `python -c "import torch"` (the floor for anything that captions: the model is
torch). `captioning --help`, `caption --help` and `evaluate --help` do not import Lightning; `fit --help` does.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "captioning --help": [sys.executable, "-m", "captioning", "--help"],
    "captioning caption --help": [sys.executable, "-m", "captioning", "caption", "--help"],
    "captioning evaluate --help": [sys.executable, "-m", "captioning", "evaluate", "--help"],
    "captioning fit --help": [sys.executable, "-m", "captioning", "fit", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["python -c 'import torch'"])
    print(f"{'command':<30} {'median s':>9} {'vs import torch':>16}   (median of {repeats}, interleaved)")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:9.2f} {median / base:15.2f}x")


if __name__ == "__main__":
    main()
