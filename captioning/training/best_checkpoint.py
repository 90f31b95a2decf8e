"""best.ckpt: chosen by the dataset's own check where it has one, by validation CIDEr-D where it has not.

The shapes configs keep the checkpoint with the best `val/position_accuracy` (every shape named, every position claim
true): CIDEr-D peaks epochs before the model learns which way round two shapes stand. Only the built-in shapes log
that check, and people run the same configs on their own folders (`--data.dataset folder`), so a monitored metric that
the data does not log falls back to `val/CIDEr`, with one warning, instead of stopping the run.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `monitor`, when the run does not log it, reads `fallback` instead.

    Args:
        fallback: the metric to choose by when `monitor` is not logged (None: Lightning's error instead).
    """

    def __init__(self, *args, fallback: str | None = "val/CIDEr", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fallback = fallback
        self._warned = False

    def _monitor_candidates(self, trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        missing = self.monitor is not None and self.monitor not in candidates
        if missing and self.fallback in candidates:  # the name stays, so resuming finds this callback's state
            if not self._warned:
                rank_zero_warn(
                    f"checkpoint.monitor '{self.monitor}' is not logged for this data: the best checkpoint is the one "
                    f"with the best '{self.fallback}'"
                )
                self._warned = True
            candidates[self.monitor] = candidates[self.fallback]
        return candidates
