"""The LightningModule that trains a CaptioningModel with cross-entropy (XE) and label smoothing.

AdamW with linear warm-up and cosine decay; validation decodes greedily and scores BLEU-4 and CIDEr-D with
`captioning.metrics` (the coco-caption definitions), gathering every process's captions before scoring.
`captioning test` writes `predictions.json` and `metrics.json` into the run's log folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from captioning.checkpoint import checkpoint_metadata
from captioning.data.shapes import grounded_accuracy
from captioning.files import write_json
from captioning.metrics import CaptionScorer
from captioning.model.captioner import CaptioningModel, ModelConfig
from captioning.model.generation import greedy_decode
from captioning.text.tokenizer import CaptionTokenizer


class CaptioningModule(LightningModule):
    """Trains the captioning model; the model itself is built once the tokenizer is known (`configure_model`).

    Args:
        encoder: timm model name of the image encoder.
        pretrained: load the encoder's pretrained timm weights.
        freeze_encoder: keep the encoder's weights fixed.
        image_size: square input size in pixels, None for the encoder's default.
        dim: decoder width D.
        depth: number of decoder blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        max_length: caption length limit in tokens, end token included.
        dropout: dropout in the decoder.
        label_smoothing: cross-entropy label smoothing.
        optimizer: optimizer factory, given the parameters.
        warmup_steps: steps of linear learning-rate warm-up.
        min_lr_ratio: the cosine decay ends at this fraction of the peak learning rate.
        val_metrics: metric families scored during validation (CIDEr-D drives checkpointing).
    """

    def __init__(
        self,
        encoder: str = "test_convnext",
        pretrained: bool = False,
        freeze_encoder: bool = False,
        image_size: int | None = None,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_length: int = 24,
        dropout: float = 0.1,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.05,
        val_metrics: tuple[str, ...] = ("BLEU", "CIDEr"),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model: CaptioningModel | None = None
        self.tokenizer: CaptionTokenizer | None = None
        self._captions: dict = {}
        self._scorers: dict[str, CaptionScorer] = {}
        self.skipped_images = 0

    # ----------------------------------------------------------------------------------------------- set-up
    def configure_model(self) -> None:
        """Builds the model for a new run from the datamodule's tokenizer; a checkpoint's model is built when it
        is loaded (`on_load_checkpoint`), with the checkpoint's own config and tokenizer."""
        datamodule = self.trainer.datamodule
        if self.model is None and datamodule is not None and datamodule.tokenizer is not None:
            hp = self.hparams
            config = ModelConfig(
                vocab_size=datamodule.tokenizer.vocab_size,
                **{k: hp[k] for k in ("encoder", "pretrained", "freeze_encoder", "image_size", "dim", "depth")},
                **{k: hp[k] for k in ("num_heads", "mlp_ratio", "max_length", "dropout")},
            )
            self._build(config, datamodule.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        entry = checkpoint.get("captioning")
        if not entry:
            raise ValueError("not a captioning checkpoint (no 'captioning' entry with model config and tokenizer)")
        config = ModelConfig.from_dict({**entry["model_config"], "pretrained": False})  # its weights follow
        if self.model is None or self.model.config != config or self.tokenizer.to_json() != entry["tokenizer"]:
            self._build(config, CaptionTokenizer.from_json(entry["tokenizer"]))

    def _build(self, config: ModelConfig, tokenizer: CaptionTokenizer) -> None:
        self.model, self.tokenizer = CaptioningModel(config), tokenizer
        if self.trainer.datamodule is not None:
            self.trainer.datamodule.tokenizer = tokenizer  # training captions must use the model's vocabulary

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["captioning"] = checkpoint_metadata(self.model.config, self.tokenizer)

    def _require_model(self) -> None:
        if self.model is None:
            raise RuntimeError("no model to evaluate: pass --ckpt_path with a checkpoint written by `captioning fit`")

    on_validation_start = on_test_start = on_predict_start = _require_model

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.parameters() if p.requires_grad)
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to `floor`
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int):
        self.skipped_images += batch["skipped"]
        if not len(batch["image_ids"]):
            return None  # every image of the batch was unreadable
        tokens = batch["tokens"]  # (B*K, T+1): [BOS] words [EOS] [PAD]...
        logits = self.model(batch["images"], tokens[:, :-1])  # (B*K, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            tokens[:, 1:].flatten(),
            ignore_index=self.tokenizer.pad_id,
            label_smoothing=self.hparams.label_smoothing,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image_ids"]))
        return loss

    def on_train_epoch_end(self) -> None:
        count = torch.tensor(float(self.skipped_images), device=self.device)
        skipped = int(self.trainer.strategy.reduce(count, reduce_op="sum"))  # all processes together
        if skipped:
            rank_zero_warn(f"skipped {skipped} unreadable training images this epoch (named above)")
        self.log("train/skipped_images", float(skipped))
        self.skipped_images = 0

    # ---------------------------------------------------------------------------------- validation and test
    @torch.no_grad()
    def caption_batch(self, batch: dict) -> dict:
        """Greedy captions of a batch, by image id."""
        if not len(batch["image_ids"]):
            return {}
        memory = self.model.encode(batch["images"])  # (B, M, D)
        tok = self.tokenizer
        never = [tok.pad_id, tok.bos_id]  # not words: an untrained model may still rank them first
        generated = greedy_decode(self.model.decoder, memory, tok.bos_id, tok.eos_id, tok.pad_id, suppress_tokens=never)
        return dict(zip(batch["image_ids"], tok.decode_batch(generated.tokens), strict=True))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._captions.update(self.caption_batch(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._captions.update(self.caption_batch(batch))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return [{"image_id": i, "caption": c} for i, c in self.caption_batch(batch).items()]

    def on_validation_epoch_end(self) -> None:
        scores = self._score("val", self._collect(), self.hparams.val_metrics)
        for name, value in scores.items():
            self.log(f"val/{name}", value, prog_bar=name in ("CIDEr", "Bleu_4"))

    def on_test_epoch_end(self) -> None:
        captions = self._collect()
        scores = self._score("test", captions, None)
        scenes = self.trainer.datamodule.scenes("test")
        if scenes is not None and captions:
            scores["grounded_accuracy"] = grounded_accuracy(captions, scenes)
        for name, value in scores.items():
            self.log(f"test/{name}", value)
        log_dir = self.trainer.log_dir  # a collective under DDP: every process must ask
        if self.trainer.is_global_zero and log_dir:
            predictions = [{"image_id": i, "caption": c} for i, c in sorted(captions.items())]
            write_json(Path(log_dir) / "predictions.json", predictions)
            write_json(Path(log_dir) / "metrics.json", scores)

    def _collect(self) -> dict:
        """This epoch's captions of all processes; the buffer is emptied for the next epoch."""
        captions, self._captions = _gather(self._captions), {}
        return captions

    def _score(self, split: str, captions: dict, metrics: tuple[str, ...] | None) -> dict[str, float]:
        """Scores the captions against the split's references on the first process (METEOR starts a JVM), and
        shares the scores with the others so that every process logs and checkpoints on the same numbers."""
        scores = {}
        if self.trainer.is_global_zero and captions and not self.trainer.sanity_checking:
            if split not in self._scorers:  # tokenized references and CIDEr-D document frequencies, once per split
                references = self.trainer.datamodule.references(split)
                self._scorers[split] = CaptionScorer(references, metrics=metrics)
            scores = self._scorers[split].score(captions)
        return self.trainer.strategy.broadcast(scores, src=0)


def _gather(captions: dict) -> dict:
    """Every process's captions, merged (a distributed sampler may repeat images to even out the shards)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return captions
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, captions)
    return {image_id: caption for shard in shards for image_id, caption in shard.items()}
