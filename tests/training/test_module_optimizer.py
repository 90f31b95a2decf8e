"""The training module's optimizer as Lightning runs it: the encoder learns at its share of the rate, and with
`encoder_frozen_epochs` it holds still for those epochs while the decoder learns, then moves."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, tiny_data

pytestmark = pytest.mark.slow


class Snapshots(L.Callback):
    """The encoder's and the decoder's weights at the start of training and at the end of every epoch."""

    def __init__(self) -> None:
        self.encoder, self.decoder = [], []

    def _take(self, module: CaptioningModule) -> None:
        self.encoder.append([p.detach().clone() for p in module.model.encoder.parameters() if p.requires_grad])
        self.decoder.append([p.detach().clone() for p in module.model.decoder.parameters()])

    def on_train_start(self, trainer, module) -> None:
        self._take(module)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._take(module)


def changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# 96 images in batches of 16: 6 steps an epoch; max_steps may end the run before max_epochs, not change an epoch
@pytest.mark.parametrize("length", [{"max_epochs": 2}, {"max_epochs": 3, "max_steps": 9}], ids=["epochs", "steps"])
def test_encoder_holds_still_for_its_frozen_epochs_and_learns_at_its_share_afterwards(shapes_root, one_thread, length):
    L.seed_everything(0, verbose=False)
    data = tiny_data(shapes_root)
    module = CaptioningModule(
        **TINY_MODEL, warmup_steps=2, encoder_lr_scale=0.1, encoder_frozen_epochs=1,
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05),
    )  # fmt: skip
    snapshots = Snapshots()
    trainer = L.Trainer(
        **length, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[snapshots],
    )  # fmt: skip
    trainer.fit(module, data)
    start, first, second = snapshots.encoder
    assert not changed(start, first) and changed(first, second)  # still during epoch 0, learning in epoch 1
    assert changed(snapshots.decoder[0], snapshots.decoder[1])
    optimizer = trainer.optimizers[0]
    peaks = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert peaks == {"encoder/decay": 1e-4, "encoder/no_decay": 1e-4, "decoder/decay": 1e-3, "decoder/no_decay": 1e-3}
    assert {group["name"]: group["weight_decay"] for group in optimizer.param_groups}["decoder/no_decay"] == 0.0
