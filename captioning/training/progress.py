"""Progress for a log file: when stdout is not a terminal, a line every N training steps and one per epoch, instead
of progress bars redrawn many times a second (which fill a redirected log with hundreds of kilobytes). On a terminal,
Lightning's bar, showing the training metrics as of the last logging step.

Training metrics stay off Lightning's own progress-bar metrics, which it reads back from the device at every step (a
host sync that stalls a GPU); these bars read the logged values only at logging steps.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

SHOWN = ("train/loss", "scst/reward")  # the logged training metrics that the bars show


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
        metrics.update(logged_metrics(trainer))  # read here, every N steps
        of = f"/{total}" if isinstance(total, int) else ""
        self._print(trainer, f"epoch {trainer.current_epoch} step {done}{of}  {_format(metrics)}  ({rate:.2f} it/s)")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._print(trainer, f"epoch {trainer.current_epoch} validation  {_format(metrics)}")


class _ShowsLoggedMetrics:
    """For a Lightning bar: the logged training metrics as of the last logging step (read only then)."""

    _shown: dict[str, float] = {}
    _read_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) == 0 and step != self._read_at:
            self._shown, self._read_at = logged_metrics(trainer), step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        return {**super().get_metrics(trainer, pl_module), **self._shown}


class StepProgressBar(_ShowsLoggedMetrics, TQDMProgressBar):
    """Lightning's tqdm bar, with the logged training metrics as of the last logging step."""


class StepRichProgressBar(_ShowsLoggedMetrics, RichProgressBar):
    """Lightning's rich bar (its default where `rich` is installed), with the same metrics."""


def showing_logged_metrics(bar: TQDMProgressBar | RichProgressBar) -> StepProgressBar | StepRichProgressBar:
    """The same kind of bar, with the same settings, showing the logged training metrics."""
    if isinstance(bar, RichProgressBar):
        return StepRichProgressBar(bar.refresh_rate, bar._leave, bar.theme, bar._console_kwargs)
    return StepProgressBar(bar.refresh_rate, bar.process_position)


def logged_metrics(trainer) -> dict[str, float]:
    """The latest logged values of the metrics in SHOWN (a host read of each)."""
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name in SHOWN}


def _format(metrics: dict) -> str:
    return "  ".join(f"{name}={float(value):.4g}" for name, value in sorted(metrics.items()))
