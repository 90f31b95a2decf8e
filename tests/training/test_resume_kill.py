"""A real kill: `captioning fit` in a subprocess gets SIGKILL mid-epoch and resumes with `--ckpt_path last.ckpt`.

A callback of this module records every training step (batch contents, loss, learning rates, the schedule's and the
optimizer's step counts), so the resumed run can be compared step by step with an uninterrupted one of the same seed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import ROOT, TINY_SPLITS, last_validation_cider, metrics_rows, run_cli, start_cli, tiny_args

BATCH_SIZE = 8
STEPS_PER_EPOCH = TINY_SPLITS["train"] // BATCH_SIZE  # 12
EPOCHS = 2
INTERVAL = 5  # last.ckpt every 5 optimizer steps: at 5, 10, 15, 20
KILL_AFTER_STEP = 16  # mid-epoch 1, after last.ckpt at step 15 (3 of its 12 batches)


class RecordSteps(Callback):
    """Appends one JSON line per training step to `path` (flushed at once, so a SIGKILL loses nothing written)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        optimizer = trainer.optimizers[0]
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "image_ids": batch["image_ids"],
            "loss": float(outputs["loss"]),
            "lr": [group["lr"] for group in optimizer.param_groups],
            "schedule_step": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "optimizer_step": max(int(state["step"]) for state in optimizer.state.values() if "step" in state),
        }
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")


def fit_args(data: Path, run_dir: Path, record: Path, *extra: str) -> list[str]:
    return tiny_args(
        "fit",
        data,
        run_dir,
        f"--data.batch_size={BATCH_SIZE}",
        f"--trainer.max_epochs={EPOCHS}",
        "--model.warmup_steps=5",
        "--test_after_fit=false",
        f"--last_checkpoint.every_n_train_steps={INTERVAL}",
        "--trainer.callbacks+=tests.training.test_resume_kill.RecordSteps",
        f"--trainer.callbacks.path={record}",
        *extra,
    )


def read_records(path: Path) -> list[dict]:
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # a line still being written has no newline
    return [json.loads(line) for line in lines]


def logged_training_steps(run_dir: Path) -> list[tuple[str, str]]:
    return [(row["epoch"], row["step"]) for row in metrics_rows(run_dir) if row.get("train/loss")]


def kill_after(
    process: subprocess.Popen, record: Path, step: int, log: Path, sent: int = signal.SIGKILL, timeout: float = 240
) -> None:
    """Sends `sent` once the run has recorded `step` (polling its record, as one would watch metrics.csv)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(r["step"] >= step for r in read_records(record)[-3:]):
            process.send_signal(sent)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    ended = -signal.SIGKILL if sent == signal.SIGKILL else 1  # Lightning shuts down after Ctrl-C and exits 1
    assert process.returncode == ended, f"the run ended before it was stopped:\n{log.read_text()[-3000:]}"


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_at_the_next_batch_and_ends_as_an_uninterrupted_one(tmp_path, shapes_root):
    reference_record, record = tmp_path / "reference.jsonl", tmp_path / "killed.jsonl"
    reference_log = tmp_path / "reference.log"
    reference = start_cli(*fit_args(shapes_root, tmp_path / "reference", reference_record), log=reference_log)
    killed = start_cli(*fit_args(shapes_root, tmp_path / "run", record), log=tmp_path / "killed.log")
    kill_after(killed, record, KILL_AFTER_STEP, tmp_path / "killed.log")
    killed_steps = [r["step"] for r in read_records(record)]
    last = tmp_path / "run" / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved_step % INTERVAL == 0 and saved_step % STEPS_PER_EPOCH, f"last.ckpt at step {saved_step}: not mid-epoch"
    lost = max(killed_steps) - saved_step
    assert 0 <= lost <= INTERVAL
    assert not list(last.parent.glob(".*partial"))

    resumed = run_cli(*fit_args(shapes_root, tmp_path / "run", record, f"--ckpt_path={last}"), cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]

    # No step lost or repeated: the resumed run starts right after the checkpoint and ends where the reference does.
    records = read_records(record)
    after_kill = records[len(killed_steps) :]
    assert [r["step"] for r in after_kill] == list(range(saved_step + 1, EPOCHS * STEPS_PER_EPOCH + 1))
    # The same batches in the same places, the same schedule and optimizer counts, the same losses: dropout and the
    # captions' order are drawn by seed, epoch and batch or image, not from the state the killed process was in.
    expected = read_records(reference_record)
    continued = records[:saved_step] + after_kill
    assert len(continued) == len(expected) == EPOCHS * STEPS_PER_EPOCH
    for got, want in zip(continued, expected, strict=True):
        for key in ("step", "epoch", "batch_idx", "image_ids", "schedule_step", "optimizer_step"):
            assert got[key] == want[key], (key, got, want)
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9), got["step"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]

    # the curve has no step twice
    assert logged_training_steps(tmp_path / "run") == logged_training_steps(tmp_path / "reference")
    cider, reference_cider = last_validation_cider(tmp_path / "run"), last_validation_cider(tmp_path / "reference")
    loss_gap = max(abs(got["loss"] / want["loss"] - 1) for got, want in zip(continued, expected, strict=True))
    print(f"\nsteps lost to the kill: {lost} (interval {INTERVAL}); largest relative loss difference per step "
          f"{loss_gap:.1e}; final val CIDEr-D resumed {cider:.4f}, uninterrupted {reference_cider:.4f}")  # fmt: skip
    assert reference_cider > 0
    assert cider == pytest.approx(reference_cider, rel=1e-6)


def test_ctrl_c_stops_the_run_and_says_how_to_go_on(tmp_path, shapes_root):
    record, log = tmp_path / "steps.jsonl", tmp_path / "run.log"
    process = start_cli(*fit_args(shapes_root, tmp_path / "run", record), log=log)
    kill_after(process, record, INTERVAL + 1, log, sent=signal.SIGINT)  # after the first last.ckpt
    last = tmp_path / "run" / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"interrupted: to go on, run the same command with --ckpt_path {last}" in log.read_text().splitlines()
