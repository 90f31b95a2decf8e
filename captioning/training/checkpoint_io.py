"""Checkpoints written atomically and durably: into a partial file beside the target, fsynced, then renamed over it.

A run killed while saving keeps its previous `last.ckpt` intact, so it can always resume; a write that fails (a full
disk) removes its partial file, leaves the previous checkpoint as it was, and stops training with a one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec.utils
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from captioning.checkpoint import UNREADABLE, missing_entries, refuse_other_files, unreadable
from captioning.errors import CheckpointError, UserError


class CheckpointWriteError(UserError):
    """A checkpoint that could not be written (disk full, no permission, quota): the message names the file."""


def _fsync_directory(folder: Path) -> None:
    """Makes a rename in `folder` durable: without it, a power cut can bring back the old directory entry."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        # Object stores (s3://...) write whole objects: only a local file is written beside and renamed.
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            os.replace(partial, path)
        except BaseException as error:
            partial.unlink(missing_ok=True)
            if not isinstance(error, OSError):
                raise
            kept = f"; the previous {path.name} is left as it was" if path.exists() else ""
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {error.strerror or error}{kept}") from error
        try:
            _fsync_directory(path.parent)
        except OSError as error:
            message = f"cannot sync the folder of checkpoint {path}: {error.strerror or error}"
            raise CheckpointWriteError(message) from error

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Loads with `weights_only=True` whatever the caller asks (`--ckpt_path`): pickled code is refused, not run.

        Raises:
            CheckpointError: one line naming the file, for a truncated, foreign or code-carrying checkpoint.
        """
        if Path(path).is_file():  # a remote path goes straight to Lightning
            refuse_other_files(Path(path))
        kwargs = {"map_location": map_location} if map_location is not None else {}
        try:
            checkpoint = super().load_checkpoint(path, weights_only=True, **kwargs)
        except FileNotFoundError:
            raise
        except UNREADABLE as error:
            raise unreadable(path, error) from None
        problem = missing_entries(checkpoint) if isinstance(checkpoint, dict) else "not a checkpoint dictionary"
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        return checkpoint
