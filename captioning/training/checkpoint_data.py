"""A fit from a checkpoint trains with the checkpoint's vocabulary, on the data it is given: the two must fit.

Captions in another language than the vocabulary's are refused; a vocabulary that misses many of the captions' words,
and a resumed run whose training data changed, are told in one line each.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from captioning.checkpoint import training_data
from captioning.errors import UserError, UserNotice
from captioning.text.tokenizer import CaptionTokenizer

SAMPLED_CAPTIONS = 2000  # training images whose captions are read for the vocabulary's coverage
MOST_UNKNOWN = 0.1  # the share of unknown words above which the run is told


def check_data_for_checkpoint(path: str, tokenizer: CaptionTokenizer, trainer, max_length: int, resuming: bool) -> None:
    """Checks the training data of `trainer` (when it fits) against the checkpoint at `path` and its `tokenizer`.

    Args:
        max_length: caption positions, as the captions are encoded for training.
        resuming: the run continues the checkpoint's (`--ckpt_path`), rather than starting from its weights.
    """
    datamodule = trainer.datamodule
    if trainer.state.fn != "fit" or not hasattr(datamodule, "training_data"):
        return
    if datamodule.language != tokenizer.language:
        raise UserError(
            f"{path}: its vocabulary is for captions in '{tokenizer.language}', but the training captions are in "
            f"'{datamodule.language}' (data.language); start from a checkpoint of their language, or from none"
        )
    train = datamodule.datasets.get("train")
    captions = [c for record in getattr(train, "records", [])[:SAMPLED_CAPTIONS] for c in record.captions]
    if captions:
        ids = tokenizer.encode(captions, max_length)
        words = ~torch.isin(ids, torch.tensor([tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id]))
        unknown = float((ids == tokenizer.unk_id).sum() / words.sum().clamp(min=1))
        if unknown > MOST_UNKNOWN:
            rank_zero_warn(
                f"{path}: {unknown:.0%} of the training captions' words are not in its vocabulary of "
                f"{tokenizer.vocab_size} tokens; they train as the unknown word",
                category=UserNotice,
            )
    before, now = training_data(path), datamodule.training_data()
    if resuming and before and before != now:
        rank_zero_warn(
            f"{path} was trained on {before['dataset']} ({before['images']} images); this run resumes it on "
            f"{now['dataset']} ({now['images']} images)",
            category=UserNotice,
        )
