"""`model.encoder_output_stride` from the training module's settings into a checkpoint, and back out of it:
`Captioner.from_checkpoint` rebuilds the finer memory grid that training used."""

from __future__ import annotations

import lightning as L
import torch

from captioning import Captioner
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, tiny_data

MODEL = {**TINY_MODEL, "encoder": "test_resnet"}  # 64 px: a 2x2 grid at the default stride 32


def test_the_output_stride_is_saved_in_the_checkpoint_and_rebuilds_the_same_model(shapes_root, one_thread, tmp_path):
    L.seed_everything(0, verbose=False)
    data = tiny_data(shapes_root, encoder=MODEL["encoder"])
    module = CaptioningModule(**MODEL, encoder_output_stride=16, warmup_steps=1)
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, data)
    assert module.model.encoder.grid_size == (4, 4) and module.model.memory_positions().shape[1] == 16
    trainer.save_checkpoint(tmp_path / "stride16.ckpt")

    captioner = Captioner.from_checkpoint(tmp_path / "stride16.ckpt", device="cpu")
    assert captioner.model.config.encoder_output_stride == 16 and captioner.model.encoder.grid_size == (4, 4)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(captioner.model.encode(images), module.model.eval().encode(images))
