"""SCST as the math says: the captions are sampled from the decoder without dropout, and the gradient pass scores them
under that same policy (REINFORCE is unbiased only then); the decoder trains with dropout again afterwards."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer

from captioning.model.attention import Attention
from captioning.text.packing import PackedRows
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


class FirstStep(Callback):
    """The first step's loss, and the cross-entropy of its reference captions under the weights it started from."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with torch.no_grad():
            logits = module.model.decoder(batch["inputs"], module.batch_memory(batch), packing=PackedRows.of(batch))
            self.reference_loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=module.tokenizer.pad_id,
                label_smoothing=module.hparams.label_smoothing,
            ).item()  # fmt: skip

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.loss = outputs["loss"].item()
        self.logged = trainer.callback_metrics.get("scst/reference_loss")


def first_scst_step(shapes_root, xe_weight: float) -> FirstStep:
    torch.manual_seed(0)
    module = CaptioningModule(**TINY_MODEL, scst=True, scst_samples=2, dropout=0.0, scst_xe_weight=xe_weight)
    step = FirstStep()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, callbacks=[step], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(1)  # the same batch and the same samples in both runs
    trainer.fit(module, tiny_data(shapes_root))
    return step


def test_the_mixed_objective_adds_the_weighted_cross_entropy_of_the_references(shapes_root, one_thread):
    alone, mixed = first_scst_step(shapes_root, 0.0), first_scst_step(shapes_root, 0.5)
    assert alone.logged is None  # the policy gradient alone computes no reference pass
    assert float(mixed.logged) == pytest.approx(mixed.reference_loss, rel=1e-4)
    assert mixed.loss - alone.loss == pytest.approx(0.5 * mixed.reference_loss, rel=1e-3)
