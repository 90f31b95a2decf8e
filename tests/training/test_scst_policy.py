"""SCST as the math says: the captions are sampled from the decoder without dropout, and the gradient pass scores them
under that same policy (REINFORCE is unbiased only then); the decoder trains with dropout again afterwards."""

from __future__ import annotations

import torch
from lightning import Callback, Trainer

from captioning.model.attention import Attention
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, tiny_data


class DropoutModes(Callback):
    """Records, during each training batch, whether each of the decoder's dropout sites ran in training mode."""

    def __init__(self) -> None:
        self.modes: list[bool] = []
        self.after: list[bool] = []
        self._handles: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        sites = [m for m in module.model.decoder.modules() if isinstance(m, (torch.nn.Dropout, Attention))]
        record = lambda site, args, output: self.modes.append(site.training)  # noqa: E731
        self._handles = [site.register_forward_hook(record) for site in sites]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        for handle in self._handles:
            handle.remove()
        self.after.append(module.model.decoder.training)


def test_the_gradient_pass_scores_the_samples_under_the_policy_that_drew_them(shapes_root, one_thread):
    torch.manual_seed(0)
    module = CaptioningModule(**TINY_MODEL, scst=True, scst_samples=2, dropout=0.3, warmup_steps=1)
    modes = DropoutModes()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, callbacks=[modes], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root))
    assert modes.modes and not any(modes.modes)  # sampling and the teacher-forced pass: dropout off in both
    assert modes.after == [True, True]  # and back to training mode for what comes next
