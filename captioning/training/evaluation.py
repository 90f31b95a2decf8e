"""Validation, test and predict for the `CaptioningModule`: its captions of every process, gathered and scored.

Scores are the coco-caption metrics (`captioning.metrics`), the dataset's own checks against its ground truth when it
has them (the built-in shapes), the foil test (`foil`) and how varied the captions are (`diagnostics`). `captioning
test` and `captioning predict` write `predictions.json` (and test `metrics.json`) into the run's log folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

from captioning.errors import UserNotice
from captioning.files import write_json
from captioning.metrics import CaptionScorer
from captioning.metrics.words import split_lines
from captioning.training.diagnostics import caption_diagnostics, collapse_warning
from captioning.training.distributed import share_from_first
from captioning.training.foil import FoilProbe

if TYPE_CHECKING:  # the module owns its evaluation: an import at run time would be a cycle
    from captioning.training.module import CaptioningModule


class Evaluation:
    """Collects an epoch's captions batch by batch, then scores, logs and writes them at the epoch's end.

    Every process must call the epoch-end methods: they gather captions, share the first process's scores and sum
    the foil counts over all processes, in the same order on each.

    Args:
        module: the module that owns it: its weights caption, its trainer and datamodule supply the data, and the
            scores are logged through it.
    """

    def __init__(self, module: CaptioningModule) -> None:
        self.module = module
        self.captions: dict = {}  # this epoch's, on this process: image id -> caption
        self.test_counts: dict[str, int] = {}  # images scored and images in the split, of the last test
        self._foils: dict[str, FoilProbe] = {}
        self._scorers: dict[str, CaptionScorer] = {}
        self._training_captions: set[str] | None = None  # for the share of novel captions

    @property
    def trainer(self):
        return self.module.trainer

    # ------------------------------------------------------------------------------------------ each batch
    @torch.no_grad()
    def caption(self, batch: dict, split: str | None = None) -> None:
        """Captions a batch and, for validation and test (`split`), scores its foil pairs, from one memory per image.

        Args:
            batch: "images" (B, 3, H, W) or "features" (B, M, C_enc), and "image_ids".
            split: the split whose foil pairs to score; None (predict): captions only.
        """
        image_ids = batch["image_ids"]
        if not len(image_ids):
            return
        model = self.module.eval_model
        memory = self.module.batch_memory(batch, model)  # (B, M, D)
        self.captions.update(self.module.caption_memory(model, memory, image_ids))
        if split is not None and not self.trainer.sanity_checking:
            self._foil_probe(split).observe(model.decoder, memory, image_ids)

    # ------------------------------------------------------------------------------------- each epoch's end
    def end_validation(self) -> None:
        scores = self._scores("val", self._collect(), self.module.hparams.val_metrics)
        for name, value in scores.items():
            self.module.log(f"val/{name}", value, prog_bar=name in ("CIDEr", "Bleu_4"))

    def end_test(self) -> None:
        captions = self._collect()
        scores = self._scores("test", captions, self.module.hparams.get("test_metrics"))
        for name, value in scores.items():
            self.module.log(f"test/{name}", value)
        self.test_counts = {"images_scored": len(captions), "images_in_split": _dataset_size(self.trainer)}
        self._write({"predictions.json": _results(captions), "metrics.json": {**scores, **self.test_counts}})

    def end_predict(self) -> None:
        self._write({"predictions.json": _results(self._collect())})

    def _collect(self) -> dict:
        """This epoch's captions of all processes; the buffer is emptied for the next epoch."""
        captions, self.captions = _gather(self.captions), {}
        return captions

    def _scores(self, split: str, captions: dict, metrics: tuple[str, ...] | None) -> dict[str, float]:
        scores = self._score(split, captions, metrics)
        scores.update(self._check(split, captions))
        scores.update(self._foil_scores(split))
        scores.update(self._diagnostics(split, captions))
        return scores

    def _write(self, files: dict) -> None:
        log_dir = self.trainer.log_dir  # a collective under DDP: every process must ask
        if self.trainer.is_global_zero and log_dir:
            for name, content in files.items():
                write_json(Path(log_dir) / name, content)

    # ------------------------------------------------------------------------------------------- the scores
    def _score(self, split: str, captions: dict, metrics: tuple[str, ...] | None) -> dict[str, float]:
        """Scores the captions against the split's references on the first process (METEOR starts a JVM), and
        shares the scores with the others so that every process logs and checkpoints on the same numbers."""
        scores = {}
        if self.trainer.is_global_zero and captions and not self.trainer.sanity_checking:
            if split not in self._scorers:  # tokenized references and CIDEr-D document frequencies, once per split
                references = self.trainer.datamodule.references(split)
                language = self.module.tokenizer.language
                self._scorers[split] = CaptionScorer(references, metrics=metrics, language=language)
            scores = self._scorers[split].score(captions)
        return share_from_first(scores)  # the others wait for as long as the scoring takes (see `distributed`)

    def _check(self, split: str, captions: dict) -> dict[str, float]:
        """The dataset's own check of captions against its ground truth, when it has one (the built-in shapes)."""
        check = getattr(self.trainer.datamodule, "check_captions", None)
        if check is None or not captions or self.trainer.sanity_checking:
            return {}
        return check(split, captions)

    def _foil_probe(self, split: str) -> FoilProbe:
        if split not in self._foils:  # the pairs of a split's references, tokenized once
            references = self.trainer.datamodule.references(split)
            self._foils[split] = FoilProbe(references, self.module.tokenizer, self.module.model.config.max_length)
        return self._foils[split]

    def _foil_scores(self, split: str) -> dict[str, float]:
        """{"foil_accuracy", "foil_pairs"} over every process's pairs; {} when the split has none."""
        if split not in self._foils:
            return {}
        counts = torch.tensor(self._foils[split].result(), dtype=torch.float32, device=self.module.device)
        wins, pairs = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        return {"foil_accuracy": wins / pairs, "foil_pairs": pairs} if pairs else {}

    def _diagnostics(self, split: str, captions: dict) -> dict[str, float]:
        """How varied the captions are (`diagnostics.caption_diagnostics`), with a warning when they collapsed."""
        if not captions or self.trainer.sanity_checking:
            return {}
        tokenizer = self.module.tokenizer
        if self._training_captions is None:  # the training captions as words, read once
            training = getattr(self.trainer.datamodule, "training_captions", lambda: None)()
            self._training_captions = set(split_lines(training, tokenizer.language)) if training else set()
        scores = caption_diagnostics(captions, tokenizer, self._training_captions or None)
        warning = collapse_warning(split, scores, len(captions))
        if warning:
            rank_zero_warn(warning, category=UserNotice)
        return scores


def _dataset_size(trainer) -> int:
    """Images in the split being tested, over all processes: the datamodule's count (a streamed split's loader holds
    one process's share), else the test loader's dataset, whatever sampler shards it."""
    count = getattr(trainer.datamodule, "images_in_split", None)
    if count is not None:
        return count("test")
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return len(loader.dataset)


def _results(captions: dict) -> list[dict]:
    """Captions in the COCO results format."""
    return [{"image_id": i, "caption": c} for i, c in sorted(captions.items())]


def _gather(captions: dict) -> dict:
    """Every process's captions, merged (a distributed sampler may repeat images to even out the shards)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return captions
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, captions)
    return {image_id: caption for shard in shards for image_id, caption in shard.items()}
