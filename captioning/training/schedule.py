"""The learning-rate schedule, set so that it means the same on 1 GPU and on 64: warm-up in epochs (or raw steps, as
older configs have it), cosine decay over the run's optimizer steps, and a peak learning rate scaled from a reference
batch size to the global batch (linear: Goyal et al., 2017, "Accurate, Large Minibatch SGD"; square root, the rule for
Adam: Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from captioning.errors import UserError

Scaling = Literal["none", "linear", "sqrt"]


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None, rule: Scaling) -> float:
    """The peak learning rate for `global_batch` images per optimizer step, given `lr` tuned at `reference_batch`.

    Raises:
        UserError: for an unknown rule, or a rule without a reference batch size.
    """
    if rule == "none":
        return lr
    if rule not in ("linear", "sqrt"):
        raise UserError(f"model.lr_scaling must be 'none', 'linear' or 'sqrt', got {rule!r}")
    if not reference_batch or reference_batch < 1:
        raise UserError(f"model.lr_scaling '{rule}' needs model.reference_batch_size (images the lr was tuned at)")
    ratio = global_batch / reference_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up over `warmup` optimizer steps, then cosine decay to `floor` times the peak at `total` steps.

    The warm-up rises as step / warmup (as Hugging Face's cosine schedule), so that with the warm-up set in epochs the
    factor at the start of each epoch is the same whatever the number of steps in an epoch; `legacy` keeps the
    (step + 1) / warmup of runs configured in steps, whose checkpoints resume on the schedule they started.
    """

    warmup: float
    total: int
    floor: float
    legacy: bool = False

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1 if self.legacy else max(step, 1)) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(
    warmup_steps: int | None, warmup_epochs: float | None, steps_per_epoch: Callable[[], int], total: int, floor: float
) -> Schedule:
    """The schedule of a run: the warm-up in epochs when `warmup_epochs` is set, else in steps.

    Args:
        steps_per_epoch: optimizer steps in one epoch on each process, asked only for a warm-up in epochs.
        total: the run's optimizer steps (`trainer.estimated_stepping_batches`).
    """
    if warmup_epochs is not None:
        if warmup_epochs < 0:
            raise UserError(f"model.warmup_epochs must be 0 or more, got {warmup_epochs}")
        return Schedule(warmup_epochs * steps_per_epoch(), total, floor)  # not rounded: exact at epoch starts
    if warmup_steps is None or warmup_steps < 0:
        raise UserError(f"model.warmup_steps must be 0 or more (or set model.warmup_epochs), got {warmup_steps}")
    return Schedule(warmup_steps, total, floor, legacy=True)


def describe(
    lr: float, peak: float, global_batch: int, rule: Scaling, reference: int | None, schedule: Schedule
) -> str:
    """One line with the effective values, printed when training starts."""
    scaling = "" if rule == "none" else f" ({rule} scaling of {lr:g} from batch {reference})"
    return (
        f"learning rate {peak:.4g} at a global batch of {global_batch} images{scaling}; warm-up {schedule.warmup:g} of "
        f"{schedule.total} optimizer steps, then cosine decay to {schedule.floor:g} of the peak"
    )
