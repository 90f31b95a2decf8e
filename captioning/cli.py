"""The `captioning` command: LightningCLI subcommands (fit, validate, test, predict) plus caption and evaluate.

`main(args=None)` is the console-script entry point and can be called from tests directly.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from collections.abc import Sequence

USAGE_EXTRA = """
other subcommands:
  caption             caption images with a trained checkpoint (captioning caption --help)
  evaluate            score a COCO results file against annotations (captioning evaluate --help)
"""


def main(args: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    try:
        if command == "caption":
            from captioning.caption import main as caption_main

            return caption_main(argv[1:])
        if command == "evaluate":
            from captioning.metrics.evaluate import main as evaluate_main

            return evaluate_main(argv[1:])
        return run_lightning(argv, pass_args=args is not None)
    except (FileNotFoundError, ValueError, RuntimeError, ArgumentError) as error:
        if os.environ.get("CAPTIONING_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def run_lightning(argv: list[str], pass_args: bool) -> int:
    from captioning.training.cli import CaptioningCLI

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE_EXTRA.strip("\n"), file=sys.stderr)
    CaptioningCLI(args=argv if pass_args else None)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
