"""The `captioning` command: LightningCLI subcommands (fit, validate, test, predict) plus caption and evaluate.

`main(args=None)` is the console-script entry point and can be called from tests directly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE_EXTRA = """
other subcommands:
  caption             caption images with a trained checkpoint (captioning caption --help)
  evaluate            score a COCO results file against annotations (captioning evaluate --help)
"""


def main(args: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    command = args[0] if args else None
    try:
        if command == "caption":
            from captioning.caption import main as caption_main

            return caption_main(args[1:])
        if command == "evaluate":
            from captioning.metrics.evaluate import main as evaluate_main

            return evaluate_main(args[1:])
        return run_lightning(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        if os.environ.get("CAPTIONING_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def run_lightning(args: list[str]) -> int:
    from captioning.training.cli import CaptioningCLI

    if not args or args[0] in ("-h", "--help"):
        print(USAGE_EXTRA.strip("\n"), file=sys.stderr)
    CaptioningCLI(args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
