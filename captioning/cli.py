"""The `captioning` command: Lightning's subcommands (fit, validate, test, predict) and our own tools.

Each subcommand names the module that runs it, imported only when that subcommand runs: `captioning --help`,
`caption` and `evaluate` start without importing Lightning. `main(args=None)` is the console-script entry point
and can be called from tests directly.
"""

from __future__ import annotations

import importlib
import os
import sys
from argparse import ArgumentError
from collections.abc import Sequence

LIGHTNING = "captioning.training.cli"
# name: (module with `main(argv) -> int`, one-line description)
COMMANDS = {
    "fit": (LIGHTNING, "train a model from a config (then test its best checkpoint)"),
    "validate": (LIGHTNING, "score a checkpoint on the validation split"),
    "test": (LIGHTNING, "score a checkpoint on the test split: metrics.json and predictions.json"),
    "predict": (LIGHTNING, "caption a split with a checkpoint: predictions.json"),
    "caption": ("captioning.caption", "caption image files, folders and globs with a checkpoint"),
    "evaluate": ("captioning.metrics.evaluate", "score a COCO results file against reference captions"),
    "serve": ("captioning.serve.server", "serve a checkpoint over HTTP, with a demo page"),
    "export": ("captioning.export", "export a checkpoint as safetensors or ONNX"),
    "prepare": ("captioning.data.prepare", "pack a split into streamed, sharded chunks for training"),
}


def usage() -> str:
    lines = ["usage: captioning COMMAND [options]   (captioning COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        if module.__name__ == LIGHTNING:
            return module.main(argv, pass_args=args is not None)
        return module.main(rest)
    except (FileNotFoundError, ValueError, RuntimeError, ArgumentError) as error:
        if os.environ.get("CAPTIONING_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
