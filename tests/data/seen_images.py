"""A callback for training runs in a subprocess (`--trainer.callbacks`): records the image ids of every training batch
per process, and can kill its own process with SIGKILL after a given step, as a crash or a preempted node would."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SeenImages(Callback):
    """Appends one JSON line per training batch to `folder/rank{R}.jsonl`: epoch, global step after the batch,
    learning rate, loss, and the batch's image ids.

    Args:
        folder: where the files go.
        kill_after_step: SIGKILL this process once this global step is recorded (0: never).
    """

    def __init__(self, folder: str, kill_after_step: int = 0) -> None:
        self.folder, self.kill_after_step = Path(folder), kill_after_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "loss": float(outputs["loss"]),
            "ids": list(batch["image_ids"]),
        }
        with (self.folder / f"rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if trainer.global_step == self.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)


def read_batches(folder: Path) -> list[dict]:
    """All recorded batches of all processes, each with its `rank`."""
    batches = []
    for file in sorted(Path(folder).glob("rank*.jsonl")):
        rank = int(file.stem.removeprefix("rank"))
        batches += [{**json.loads(line), "rank": rank} for line in file.read_text().splitlines()]
    return batches
