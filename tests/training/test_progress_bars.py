"""The progress bars show the training loss without a read-back at every step: Lightning's own bar is replaced by one
that takes the logged values at logging steps, and the lines for a log file read them when they print."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from captioning.training.module import CaptioningModule
from captioning.training.progress import LineProgress, StepProgressBar, StepRichProgressBar
from tests.conftest import TINY_MODEL, tiny_data


def _fit(shapes_root, callbacks: list) -> tuple[Trainer, CaptioningModule]:
    torch.manual_seed(0)
    module = CaptioningModule(**TINY_MODEL, warmup_steps=1)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=4, limit_val_batches=0, log_every_n_steps=2, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root))
    return trainer, module


@pytest.mark.parametrize("lightning_bar", [TQDMProgressBar, RichProgressBar])
def test_the_terminal_bar_shows_the_loss_of_the_last_logging_step(shapes_root, one_thread, lightning_bar):
    trainer, module = _fit(shapes_root, [lightning_bar()])  # Lightning's default is rich where rich is installed
    bar = trainer.progress_bar_callback
    assert isinstance(bar, (StepProgressBar, StepRichProgressBar)) and isinstance(bar, lightning_bar)  # replaced
    assert "train/loss" not in trainer.progress_bar_metrics  # never on Lightning's read-every-step list
    shown = bar.get_metrics(trainer, module)["train/loss"]
    assert isinstance(shown, float) and shown == float(trainer.callback_metrics["train/loss"])


def test_the_lines_for_a_log_file_show_the_loss(shapes_root, capsys, one_thread):
    _fit(shapes_root, [LineProgress(every_n_steps=2)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 0 step")]
    assert lines and all("train/loss=" in line for line in lines)
