"""Progress for a log file: when stdout is not a terminal, a line every N training steps and one per epoch, instead
of progress bars redrawn many times a second (which fill a redirected log with hundreds of kilobytes)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks.progress import ProgressBar


class LineProgress(ProgressBar):
    """Prints `epoch E step S/N  train/loss=...  (I it/s)` every `every_n_steps` training steps (default: the
    trainer's `log_every_n_steps`), and the validation metrics after each validation."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._epoch_started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, flush=True)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps or 50
        total = self.total_train_batches
        done = batch_idx + 1
        if done % every and done != total:
            return
        rate = done / max(1e-9, time.monotonic() - self._epoch_started)
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        of = f"/{total}" if isinstance(total, int) else ""
        self._print(trainer, f"epoch {trainer.current_epoch} step {done}{of}  {_format(metrics)}  ({rate:.2f} it/s)")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._print(trainer, f"epoch {trainer.current_epoch} validation  {_format(metrics)}")


def _format(metrics: dict) -> str:
    return "  ".join(f"{name}={float(value):.4g}" for name, value in sorted(metrics.items()))
