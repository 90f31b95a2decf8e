"""The `captioning` command: Lightning's subcommands (fit, validate, test, predict) and our own tools.

Each subcommand names the module that runs it, imported only when that subcommand runs: `captioning --help`,
`caption` and `evaluate` start without importing Lightning. `main(args=None)` is the console-script entry point
and can be called from tests directly.

Errors: a user error (a bad path, config value or checkpoint; see `is_user_error`) is one line, `error: ...`, and
exit status 1 (2 for a bad command line). Anything else (a bug, CUDA out of memory, an NCCL failure) keeps its full
traceback, followed by a one-line summary, and exit status 1. CAPTIONING_DEBUG=1 shows the traceback of every error.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from argparse import ArgumentError
from collections.abc import Sequence

from captioning.errors import UserError

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
# pyproject's extra that installs each optional dependency, by import name (a missing module cannot be traced to its
# distribution, and the names differ: multipart comes from python-multipart). Only `caption` with an ONNX export and
# `evaluate` run on the base install.
TRAIN = ("torch", "torchvision", "timm", "lightning", "lightning_utilities", "jsonargparse", "pycocotools", "fsspec")
EXTRA_OF_MODULE = {
    **dict.fromkeys(TRAIN, "train"),
    **dict.fromkeys(("litserve", "fastapi", "multipart"), "serve"),
    **dict.fromkeys(("safetensors", "onnx", "onnxscript"), "export"),
    "onnxruntime": "onnx",
    "litdata": "stream",
}


def usage() -> str:
    lines = ["usage: captioning COMMAND [options]   (captioning COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def is_user_error(error: BaseException) -> bool:
    """Whether the message alone tells the user what to fix: our UserError (bad input, a bad checkpoint, a run that
    diverged), a missing file, a bad command line or Lightning's MisconfigurationException.

    Only these types count: a plain ValueError, even one raised by this package (an internal check), keeps its
    traceback, since it reports a bug rather than bad input.
    """
    if isinstance(error, (UserError, FileNotFoundError, ArgumentError)):
        return True
    return any(cls.__name__ == "MisconfigurationException" for cls in type(error).__mro__)


def one_line(error: BaseException) -> str:
    """The error's message as one line (multi-line messages, such as jsonargparse's, are joined)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(args: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command][0])
        if module.__name__ == LIGHTNING:
            return module.main(argv, pass_args=args is not None)
        return module.main(rest)
    except Exception as error:
        if os.environ.get("CAPTIONING_DEBUG"):
            raise
        missing = error.name.split(".")[0] if isinstance(error, ModuleNotFoundError) and error.name else None
        if missing in EXTRA_OF_MODULE:
            extra = EXTRA_OF_MODULE[missing]
            print(f'error: `captioning {command}` needs {missing}: pip install -e ".[{extra}]"', file=sys.stderr)
            return 1
        if is_user_error(error):
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2 if isinstance(error, ArgumentError) else 1
        traceback.print_exc()
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        print(f"error: unexpected {type(error).__name__} in `captioning {command}`: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
