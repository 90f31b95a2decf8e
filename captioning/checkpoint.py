"""Self-contained checkpoints: weights, model hyper-parameters and the tokenizer, loaded without running code.

Lightning writes the checkpoint; the training module adds a "captioning" entry with the model config and the
tokenizer, so that `Captioner.from_checkpoint` needs nothing else. Every load goes through `read_checkpoint`:
`torch.load(weights_only=True)`, which refuses pickled code instead of running it, and a one-line
`CheckpointError` for any file that is not a readable checkpoint.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from captioning.errors import CheckpointError
from captioning.model.captioner import ModelConfig
from captioning.text.tokenizer import CaptionTokenizer

FORMAT_VERSION = 1
# What torch.load raises for a file that is not a checkpoint (truncated, another format, refused pickled objects).
UNREADABLE = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError, KeyError)


def checkpoint_metadata(config: ModelConfig, tokenizer: CaptionTokenizer) -> dict:
    return {"format": FORMAT_VERSION, "model_config": config.to_dict(), "tokenizer": tokenizer.to_json()}


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint's dictionary, loaded with `weights_only=True`: tensors and plain Python values only.

    With `mmap`, tensors stay on disk until touched (CPU only): reading the model config and the tokenizer of a
    checkpoint of a few GB then costs milliseconds.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated, not a torch checkpoint, or holds objects other than weights (such
            as a pickled function call); nothing in it has run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except UNREADABLE as error:
        raise unreadable(path, error) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dictionary)")
    return checkpoint


def unreadable(path: str | Path, error: Exception) -> CheckpointError:
    """The one-line error for a checkpoint that torch.load(weights_only=True) failed to read."""
    return CheckpointError(f"{path}: not a readable checkpoint ({_reason(error)})")


def _reason(error: Exception) -> str:
    """One line on why torch.load failed (its own messages run to a page of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        refused = next((line for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line), lines[-1])
        return f"it holds pickled code or objects other than weights, refused and not run: {refused.rstrip('.')}"
    if isinstance(error, (KeyError, EOFError, zipfile.BadZipFile)) or not lines:
        return "truncated, or not a torch checkpoint file"
    return lines[0].split(". ")[0]  # the first sentence


def load_checkpoint(
    path: str | Path, mmap: bool = False
) -> tuple[ModelConfig, CaptionTokenizer, dict[str, torch.Tensor]]:
    """Reads a captioning checkpoint safely (`mmap`: see `read_checkpoint`).

    Returns:
        The model config, the tokenizer and the model's state dict (keys without the "model." prefix): the moving
        average of the weights when the run kept one.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, mmap=mmap)
    meta = checkpoint.get("captioning")
    if not isinstance(meta, dict) or "model_config" not in meta or "tokenizer" not in meta:
        raise CheckpointError(
            f"{path}: not a captioning checkpoint (no 'captioning' entry with model config and tokenizer)"
        )
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        tokenizer = CaptionTokenizer.from_json(meta["tokenizer"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: its 'captioning' entry is damaged ({_reason(error)})") from None
    weights = checkpoint.get("state_dict", {})
    # A run with model.ema_decay keeps the moving average beside the trained weights: the average is the model.
    prefix = "ema.model." if any(k.startswith("ema.model.") for k in weights) else "model."
    state = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    return config, tokenizer, state
