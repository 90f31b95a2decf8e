"""best.ckpt when the score does not move: an equal score replaces it until the score first rises, so a validation
set too small to rank epochs (CIDEr-D of one image is always 0) does not leave the test on the first epoch."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from captioning.training.best_checkpoint import BestCheckpoint


class Scored(pl.LightningModule):
    """A linear model trained for real steps that logs given validation scores per epoch, by name."""

    def __init__(self, scores: dict[str, list[float]]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.scores = scores

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        for name, values in self.scores.items():
            self.log(name, values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def best_epoch(tmp_path, scores: list[float], cider: list[float] | None = None) -> int:
    """The epoch of best.ckpt when `scores` are val/CIDEr, or val/position_accuracy beside `cider`."""
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    monitor = "val/CIDEr" if cider is None else "val/position_accuracy"
    best = BestCheckpoint(dirpath=tmp_path, monitor=monitor, mode="max", filename="best")
    trainer = pl.Trainer(
        max_epochs=len(scores), callbacks=[best], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(Scored({monitor: scores, **({"val/CIDEr": cider} if cider else {})}), loader, loader)
    return torch.load(best.best_model_path, weights_only=True)["epoch"]


def test_a_score_that_never_moves_leaves_the_latest_epoch_as_best_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="stayed at 0 in every validation"):
        assert best_epoch(tmp_path, [0.0, 0.0, 0.0]) == 2


def test_once_the_score_has_risen_only_a_better_one_replaces_best(tmp_path):
    assert best_epoch(tmp_path, [0.0, 0.0, 0.5, 0.5, 0.2]) == 2  # the tie at 0 moved it to epoch 1, then 0.5 won


def test_a_tie_in_another_monitored_score_goes_to_the_higher_cider(tmp_path):
    """The shapes configs choose by position accuracy, 0 in the first epochs of a short run: CIDEr-D breaks the tie."""
    assert best_epoch(tmp_path / "a", [0.0, 0.0, 0.0], cider=[0.5, 0.1, 0.3]) == 0
    assert best_epoch(tmp_path / "b", [0.0, 0.0, 0.0], cider=[0.1, 0.1, 0.3]) == 2
