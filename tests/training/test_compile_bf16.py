"""bf16 mixed precision and `model.compile` on CPU: real training steps of the tiny model, loss finite and falling."""

from __future__ import annotations

import csv
import math
import shutil
import time

import pytest
import torch
from lightning import Callback, Trainer

from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, run_cli, tiny_args, tiny_data


class Losses(Callback):
    """Keeps the training loss of every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu_with_a_finite_falling_loss(shapes_root, one_thread):
    torch.manual_seed(0)
    module = CaptioningModule(**TINY_MODEL, warmup_steps=1, dropout=0.0)
    data = tiny_data(shapes_root)
    losses = Losses()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=12, limit_val_batches=0, precision="bf16-mixed", callbacks=[losses],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)
    assert len(losses.values) == 12 and all(math.isfinite(v) for v in losses.values)
    assert sum(losses.values[-3:]) / 3 < losses.values[0] - 0.1, losses.values  # 3.72 -> 3.46 in 12 steps
    assert all(p.dtype == torch.float32 for p in module.model.parameters())  # weights stay fp32, compute is bf16


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="torch.compile needs gcc")
def test_compiled_model_trains_and_validates_through_the_cli_and_saves_plain_weights(shapes_root, tmp_path):
    extra = [
        "--model.compile=true",
        "--model.warmup_steps=1",
        "--model.dropout=0",
        "--trainer.max_steps=4",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=1",
        "--test_after_fit=false",
    ]
    started = time.perf_counter()
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, *extra), timeout=900)
    print(f"compiled tiny fit, 4 steps and one validation batch: {time.perf_counter() - started:.0f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (tmp_path / "shapes").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    state = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert "model.decoder.blocks.0.self_attn.q.weight" in state  # compiled in place: no `_orig_mod.` in the names
    assert not any("_orig_mod" in key for key in state)
