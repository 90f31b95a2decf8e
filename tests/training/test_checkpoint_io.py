"""Checkpoint writes: fsynced before the atomic rename, and a full disk keeps the previous checkpoint and stops training
with a one-line error."""

from __future__ import annotations

import errno
import json
import os
from unittest import mock

import pytest
import torch

from captioning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from tests.conftest import ROOT, run_cli, tiny_args


def half_written_then_disk_full(obj, file) -> None:
    """torch.save on a disk that fills up half-way through the checkpoint."""
    file.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFullAfter(AtomicCheckpointIO):
    """The project's checkpoint IO on a disk that fills up after `saves` checkpoints (for `captioning fit`)."""

    def __init__(self, saves: int = 1) -> None:
        super().__init__()
        self.saves_left = saves

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if self.saves_left > 0:
            self.saves_left -= 1
            return super().save_checkpoint(checkpoint, path, storage_options)
        with mock.patch("torch.save", half_written_then_disk_full):
            return super().save_checkpoint(checkpoint, path, storage_options)


def test_a_checkpoint_is_synced_to_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd: int) -> None:
        calls.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        fsync(fd)

    def recorded_replace(source, target) -> None:
        calls.append(("replace", os.path.basename(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert calls == [("fsync", ".last.ckpt.partial"), ("replace", "last.ckpt"), ("fsync", tmp_path.name)]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 5, "weights": torch.arange(1000.0)}, path)
    before = path.read_bytes()
    with mock.patch("torch.save", half_written_then_disk_full), pytest.raises(CheckpointWriteError) as error:
        AtomicCheckpointIO().save_checkpoint({"global_step": 10, "weights": torch.zeros(1000)}, path)
    assert str(error.value) == (
        f"cannot write checkpoint {path}: No space left on device; the previous last.ckpt is left as it was"
    )
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_training_stops_with_a_one_line_error_when_the_disk_fills_up(tmp_path, shapes_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plugin = {"class_path": "tests.training.test_checkpoint_io.DiskFullAfter", "init_args": {"saves": 1}}
    args = ("--last_checkpoint.every_n_train_steps=2", f"--trainer.plugins=[{json.dumps(plugin)}]")
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, *args), cwd=ROOT)
    last = tmp_path / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write checkpoint {last}: No space left on device; the previous last.ckpt is left as it was"
    )
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the first save; the second (step 4) failed
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
