"""best.ckpt: chosen by the dataset's own check where it has one, by validation CIDEr-D where it has not.

The shapes configs keep the checkpoint with the best `val/position_accuracy` (every shape named, every position claim
true): CIDEr-D peaks epochs before the model learns which way round two shapes stand. Only the built-in shapes log
that check, and people run the same configs on their own folders (`--data.dataset folder`), so a monitored metric that
the data does not log falls back to `val/CIDEr`, with one warning, instead of stopping the run.

Until the score first moves, an equal score replaces best.ckpt when its `val/CIDEr` is at least as high: a score
that never moves says nothing of the epochs (CIDEr-D over a single validation image is always 0, and an undertrained
model's often is), and best.ckpt, which the test after fit scores, would otherwise stay the first, least trained one.
Once it has moved, Lightning's rule holds: only a better score replaces it.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from captioning.errors import UserNotice


class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `monitor`, when the run does not log it, reads `fallback` instead, and whose best
    checkpoint follows equal scores until the score first rises (see the module's docstring).

    Args:
        fallback: the metric to choose by when `monitor` is not logged (None: Lightning's error instead).
    """

    def __init__(self, *args, fallback: str | None = "val/CIDEr", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fallback = fallback
        self._warned = False
        self._score_moved = False  # a validation scored better than the first
        self._best_fallback: float | None = None  # the fallback metric of best.ckpt, which breaks ties
        self._scored = 0  # validations scored by this process

    def _monitor_candidates(self, trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        missing = self.monitor is not None and self.monitor not in candidates
        if missing and self.fallback in candidates:  # the name stays, so resuming finds this callback's state
            if not self._warned:
                rank_zero_warn(
                    f"checkpoint.monitor '{self.monitor}' is not logged for this data: the best checkpoint is the one "
                    f"with the best '{self.fallback}'",
                    category=UserNotice,
                )
                self._warned = True
            candidates[self.monitor] = candidates[self.fallback]
        return candidates

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        saving = super().check_monitor_top_k(trainer, current)  # the first score, or a better one
        self._scored += current is not None
        if saving and self.best_k_models:
            self._score_moved = True
        fallback = trainer.callback_metrics.get(self.fallback) if self.fallback else None
        if not (saving or current is None or self._score_moved or self.save_top_k != 1 or not self.best_k_models):
            tied = bool(torch.eq(current, self.best_k_models[self.kth_best_model_path]))
            if tied and fallback is not None and self._best_fallback is not None:
                tied = float(fallback) >= self._best_fallback
            saving = trainer.strategy.reduce_boolean_decision(tied)
        if saving and fallback is not None:  # for the ties that follow
            self._best_fallback = float(fallback)
        return saving

    def on_fit_end(self, trainer, pl_module) -> None:
        super().on_fit_end(trainer, pl_module)
        if self.best_k_models and not self._score_moved and self._scored > 1:
            rank_zero_warn(
                f"'{self.monitor}' stayed at {float(self.best_model_score):.4g} in every validation, so it could not "
                "choose a checkpoint: best.ckpt is the latest; a validation split of a few images cannot rank epochs",
                category=UserNotice,
            )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "score_moved": self._score_moved, "best_fallback": self._best_fallback}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._score_moved = state_dict.get("score_moved", True)  # older checkpoints: Lightning's rule
        self._best_fallback = state_dict.get("best_fallback")
