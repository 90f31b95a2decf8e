"""A schedule that scales: warm-up in epochs and decay over the run mean the same on one process and on two (gloo on
the CPU), the learning rate follows the global batch by the configured rule, and older configs in steps still work."""

from __future__ import annotations

import csv
import math

import pytest

from captioning.errors import UserError
from captioning.training.schedule import Schedule, build_schedule, scaled_lr
from tests.conftest import run_cli, tiny_args


def test_the_learning_rate_follows_the_global_batch_by_the_rule_in_the_config():
    assert scaled_lr(1e-3, 512, 64, "linear") == pytest.approx(8e-3)
    assert scaled_lr(1e-3, 512, 64, "sqrt") == pytest.approx(1e-3 * math.sqrt(8))
    assert scaled_lr(1e-3, 512, None, "none") == 1e-3
    with pytest.raises(UserError, match="model.reference_batch_size"):
        scaled_lr(1e-3, 512, None, "sqrt")


def test_a_warm_up_in_epochs_gives_the_same_factor_at_each_epoch_whatever_the_steps_per_epoch():
    def factors(steps_per_epoch: int) -> list[float]:
        schedule = build_schedule(None, 1.5, lambda: steps_per_epoch, 4 * steps_per_epoch, 0.1)
        return [schedule(epoch * steps_per_epoch) for epoch in range(1, 4)]

    assert factors(221) == pytest.approx(factors(1770))  # 8 GPUs and 1 GPU on COCO at batch 64
    assert factors(3)[0] == pytest.approx(1 / 1.5)  # in the warm-up, two thirds of the way up


def test_a_warm_up_in_steps_keeps_the_schedule_of_older_runs():
    schedule = build_schedule(100, None, lambda: 1 / 0, 1000, 0.05)  # steps per epoch: never asked
    assert schedule == Schedule(100, 1000, 0.05, legacy=True)
    assert [schedule(s) for s in (0, 49, 99)] == pytest.approx([0.01, 0.5, 1.0])
    with pytest.raises(UserError, match="model.warmup_epochs"):
        build_schedule(None, -1.0, lambda: 10, 100, 0.1)


def _learning_rates(tmp_path, processes: int) -> tuple[dict[int, float], str]:
    """The decoder's learning rate at the first step of each epoch, and the run's stdout."""
    extra = [
        "--model.warmup_epochs=1.5", "--model.lr_scaling=linear", "--model.reference_batch_size=16",
        "--data.flip=false", "--trainer.max_epochs=3", "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=0", "--test_after_fit=false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
        "--trainer.callbacks.logging_interval=step",
    ]  # fmt: skip
    if processes > 1:
        extra += ["--trainer.strategy=ddp", f"--trainer.devices={processes}", "--trainer.accelerator=cpu"]
    result = run_cli(*tiny_args("fit", tmp_path / "data", tmp_path / "runs", *extra), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (tmp_path / "runs" / "shapes").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    column = next(name for name in rows[0] if name.startswith("lr-") and "decoder" in name)
    steps_per_epoch = 96 // 16 // processes
    rates = {int(row["step"]): float(row[column]) for row in rows if row.get(column)}
    return {epoch: rates[epoch * steps_per_epoch] for epoch in range(3)}, result.stdout


@pytest.mark.slow
def test_two_processes_follow_the_same_schedule_per_epoch_at_the_rate_of_their_global_batch(tmp_path, shapes_root):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for run in ("one", "two"):  # each run its own copy of the tiny data, as a user's folder
        (tmp_path / run / "data").symlink_to(shapes_root, target_is_directory=True)
    one, printed_one = _learning_rates(tmp_path / "one", processes=1)
    two, printed_two = _learning_rates(tmp_path / "two", processes=2)
    assert "learning rate 0.002 at a global batch of 16 images (linear scaling of 0.002 from batch 16)" in printed_one
    assert "learning rate 0.004 at a global batch of 32 images (linear scaling of 0.002 from batch 16)" in printed_two
    for epoch in (1, 2):  # in the warm-up, then in the decay
        assert two[epoch] == pytest.approx(2 * one[epoch])  # twice the global batch, twice the rate, same shape
    assert one[1] < one[2] * 1.5  # sanity: the warm-up ends within epoch 2


def test_a_warm_up_as_long_as_the_run_is_warned(tmp_path, shapes_root):
    """configs/shapes.yaml warms up over 100 steps: on 4 steps (a small folder of one's own) the rate never peaks."""
    extra = ["--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--test_after_fit=false"]
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: model.warmup_steps: the warm-up (100 steps) is as long as the whole run (4 optimizer steps)" in (
        result.stderr
    )
