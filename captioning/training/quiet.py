"""Messages that tell a user of this project nothing they can act on, silenced where they come from."""

from __future__ import annotations

import logging
import warnings

from captioning.errors import UserNotice


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def silence_known_noise(resuming: bool = False) -> None:
    """Silences Lightning's LitLogger advertisement, the deprecation warning its pytree helper raises on every run
    and its note that a frozen encoder is in eval mode; with `resuming` (a command given a checkpoint), also its
    notes that a checkpoint from another folder does not bring its best-k bookkeeping and that the checkpoint folder
    is not empty (`test` and `predict` never need them, and `fit` resumes in the run's own folder). A metric that
    cannot run is reported in one line."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertisement) for f in logger.filters):
            logger.addFilter(_DropAdvertisement())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # A frozen encoder stays in eval mode (its BatchNorm statistics are fixed), which Lightning notes on every run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    if resuming:
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    if warnings.formatwarning is not _one_line:
        _one_line.default = warnings.formatwarning
        warnings.formatwarning = _one_line


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A notice about the user's data or settings is their news, not the code's: `warning: METEOR left out: ...`,
    without a source line."""
    if issubclass(category, UserNotice):
        return f"warning: {message}\n"
    return _one_line.default(message, category, filename, lineno, line)
