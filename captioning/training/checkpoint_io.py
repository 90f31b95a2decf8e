"""Checkpoints written atomically: to a temporary file first, then renamed over the old one.

A run killed while saving keeps its previous `last.ckpt` intact, so it can always resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)
