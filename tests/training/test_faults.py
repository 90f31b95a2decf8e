"""Faults during training: a batch without a readable image, a NaN or inf loss, a checkpoint with pickled code.

A NaN is injected through a real path (a callback that poisons a batch's pixels or a weight, as a bad decode or a
diverging step would), never by stubbing the guard. The distributed run uses two gloo processes on the CPU.
"""

from __future__ import annotations

import csv
import os
import shutil
import time

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from captioning.data.coco import load_coco_captions
from captioning.data.shapes import annotation_path
from captioning.errors import CheckpointError, TrainingDiverged
from captioning.training.checkpoint_io import AtomicCheckpointIO
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, TINY_SPLITS, run_cli, tiny_args, tiny_data


class PoisonPixels(Callback):
    """Sets every pixel of the training batches `batches` to NaN: the loss and every gradient become NaN."""

    def __init__(self, batches: range) -> None:
        self.batches = batches
        self.weights_around: dict[str, dict] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            batch["images"] = torch.full(batch["images"].shape, float("nan"))  # the loader's are 8-bit: no NaN there
            self.weights_around.setdefault("before", _weights(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self.weights_around["after"] = _weights(module)


class PoisonWeight(Callback):
    """After optimizer step `step`, one weight becomes NaN (as an overflowing update would make it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.model.decoder.parameters()).view(-1)[0] = float("nan")


def _weights(module: CaptioningModule) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


def _fit(shapes_root, callbacks: list, max_steps: int, **model) -> CaptioningModule:
    """Fits the tiny model in this process for `max_steps` real steps (no validation)."""
    module = CaptioningModule(**TINY_MODEL, warmup_steps=1, dropout=0.0, **model)
    data = tiny_data(shapes_root)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=0, gradient_clip_val=1.0,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),  # only the test's own, in tmp_path
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)
    return module


def test_a_nan_batch_is_skipped_and_counted_and_training_goes_on(shapes_root, one_thread):
    torch.manual_seed(0)
    poison = PoisonPixels(range(2, 3))
    module = _fit(shapes_root, [poison], max_steps=5)
    assert module.nonfinite.skipped == 1 and module.global_step == 5
    before, after = poison.weights_around["before"], poison.weights_around["after"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the poisoned step changed no weight
    final = _weights(module)
    assert all(v.isfinite().all() for v in final.values())
    assert any(not torch.equal(final[k], after[k]) for k in final)  # the steps after it trained again
    assert module.trainer.callback_metrics["train/nonfinite_steps"] == 1


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(shapes_root, tmp_path, one_thread):
    torch.manual_seed(0)
    saved = ModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=1, enable_version_counter=False)
    poison = PoisonPixels(range(2, 100))
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row had a non-finite loss or gradient"):
        _fit(shapes_root, [poison, saved], max_steps=20, max_nonfinite_steps=3)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    # Saved after every step, the skipped ones too (steps 2 and 3): their weights are those of the last good step.
    assert last["global_step"] == 4
    good = poison.weights_around["before"]
    assert all(torch.equal(last["state_dict"][f"model.{k}"], v) for k, v in good.items())


def test_non_finite_weights_are_never_written_over_the_last_checkpoint(shapes_root, tmp_path, one_thread):
    torch.manual_seed(0)
    saved = ModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=1, enable_version_counter=False)
    with pytest.raises(TrainingDiverged, match="the weights hold non-finite values"):
        _fit(shapes_root, [PoisonWeight(step=3), saved], max_steps=10)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert all(v.isfinite().all() for v in last["state_dict"].values())


class Payload:
    """Unpickling this runs `touch MARKER`: the classic code-carrying checkpoint."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_checkpoint_carrying_pickled_code_is_refused_and_its_code_never_runs(tmp_path, checkpoint):
    marker = tmp_path / "the-payload-ran"
    evil = tmp_path / "evil.ckpt"
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({**loaded, "payload": Payload(marker)}, evil)  # a real checkpoint, with code in it
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused and not run"):
        AtomicCheckpointIO().load_checkpoint(evil)  # Lightning's --ckpt_path loader
    from captioning.checkpoint import load_checkpoint
    from captioning.inference import Captioner

    for load in (load_checkpoint, Captioner.from_checkpoint):
        with pytest.raises(CheckpointError, match=f"{evil}: not a readable checkpoint"):
            load(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_ddp_runs_through_a_batch_whose_images_are_all_unreadable_on_one_process(tmp_path, shapes_root):
    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    # The training order of both processes, as DistributedSampler draws it with the run's seed (epoch 0): every image
    # of the first batch of process 0 is made unreadable, while process 1's first batch is intact.
    batch_size, seed = 16, 0
    shards = [list(DistributedSampler(range(TINY_SPLITS["train"]), 2, rank, seed=seed)) for rank in (0, 1)]
    records = load_coco_captions(annotation_path(data, "train"), data / "train")  # the dataset's order
    for index in shards[0][:batch_size]:
        records[index].path.write_bytes(b"not a png")
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    steps = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--test_after_fit=false"]  # a step after it
    args = tiny_args("fit", data, tmp_path, *ddp, *steps, f"--seed_everything={seed}")
    started = time.perf_counter()
    result = run_cli(*args, f"--data.batch_size={batch_size}")
    print(f"DDP fit of 2 gloo processes with an all-unreadable batch: {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (tmp_path / "shapes").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    skipped = [row for row in rows if row.get("train/skipped_images")]
    assert [float(row["train/skipped_images"]) for row in skipped] == [batch_size]
    assert [float(row["train/skipped_batches"]) for row in skipped] == [1]  # the all-unreadable batch happened
    last = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert all(v.isfinite().all() for v in last["state_dict"].values())
