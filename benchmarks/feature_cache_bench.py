"""An epoch of training with a frozen encoder: from the images against from the feature cache, measured in one run.

A frozen ViT-S/16 (`vit_small_patch16_224`, random weights: the same compute as pretrained ones) at 224 px, the
decoder of configs/shapes.yaml, on the built-in shapes images drawn at 224 px. Each epoch is a real Lightning fit:
(a) from images: decode, preprocess and encode every image, then train the decoder;
(b) from the cache: the one-off fill (printed apart), then an epoch that reads each image's tokens (float16, memory-
    mapped) and trains the decoder; (c) a second run from the same cache shows it is filled once. The cached epoch's
    loader alone is timed too: what is left is the decoder, which bounds the ratio.
Step 0's loss of (a) and (b) is printed too: the same batch, tokens that differ only by float16 rounding.

    HF_HUB_OFFLINE=1 python benchmarks/feature_cache_bench.py [--images 512] [--workers 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from captioning.data.datamodule import CaptionDataModule
from captioning.data.shapes import ensure_shapes
from captioning.training.module import CaptioningModule

ENCODER = "vit_small_patch16_224"
DECODER = {"dim": 128, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "max_length": 20}  # configs/shapes.yaml


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="training images in the epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step, each with 5 captions")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on a GPU")
    parser.add_argument("--folder", default=None, help="where the images and the cache go (default: a temp folder)")
    return parser.parse_args()


class EpochClock(L.Callback):
    """Seconds of each training epoch (loading, encoding where there is no cache, and the decoder's steps)."""

    def __init__(self) -> None:
        self.seconds, self.first_loss = [], None

    def on_train_epoch_start(self, trainer, module) -> None:
        self._synchronize(module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.first_loss is None:
            self.first_loss = outputs["loss"].item()

    def on_train_epoch_end(self, trainer, module) -> None:
        self._synchronize(module)
        self.seconds.append(time.perf_counter() - self._started)

    @staticmethod
    def _synchronize(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)


def run_epoch(args: argparse.Namespace, root: Path, cache: Path | None) -> tuple[EpochClock, CaptionDataModule]:
    """One epoch of a fresh fit, seeded alike, so every run starts from the same weights and the same batch."""
    L.seed_everything(0, verbose=False)
    data = CaptionDataModule(
        root=str(root), shapes_split_sizes={"train": args.images, "val": 8, "test": 8}, shapes_image_size=224,
        encoder=ENCODER, image_size=224, max_length=DECODER["max_length"], min_word_frequency=1,
        batch_size=args.batch_size, eval_batch_size=64, num_workers=args.workers,
        feature_cache=str(cache) if cache else None, flip=False,  # the cache holds unmirrored images' tokens
    )  # fmt: skip
    module = CaptioningModule(encoder=ENCODER, pretrained=False, freeze_encoder=True, image_size=224, **DECODER)
    clock = EpochClock()
    trainer = L.Trainer(
        max_epochs=1, accelerator=args.device, devices=1, precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(module, data)
    return clock, data


def read_seconds(data: CaptionDataModule) -> float:
    """Seconds to read the epoch's batches (tokens from the cache, captions tokenized) without training on them."""
    started = time.perf_counter()
    for _ in data.train_dataloader():
        pass
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary)
        root, cache = folder / "shapes224", folder / "cache"
        ensure_shapes(root, image_size=224, split_sizes={"train": args.images, "val": 8, "test": 8})
        steps = args.images // args.batch_size
        print(f"{ENCODER} frozen at 224 px, decoder {DECODER}, {args.images} images, {steps} steps of "
              f"{args.batch_size} images x 5 captions, {args.workers} workers, {torch.get_num_threads()} threads, "
              f"{args.device}, {args.precision}")  # fmt: skip

        images, _ = run_epoch(args, root, None)
        filled, data = run_epoch(args, root, cache)
        fill = data.feature_caches["train"].fill_seconds
        reused, data = run_epoch(args, root, cache)
        if data.feature_caches["train"].fill_seconds is not None:
            raise RuntimeError("the second run from the cache filled it again")

        size = sum(f.stat().st_size for f in (cache / "train").iterdir()) / 2**20
        print(f"fill (once):            {fill:8.1f} s  {args.images / fill:8.1f} images/s  ({size:.0f} MiB on disk)")
        print(f"epoch from images:      {images.seconds[0]:8.1f} s  {args.images / images.seconds[0]:8.1f} images/s")
        for name, run in (("epoch from cache:", filled), ("again (cache reused):", reused)):
            print(f"{name:<23} {run.seconds[0]:8.1f} s  {args.images / run.seconds[0]:8.1f} images/s")
        best = min(filled.seconds[0], reused.seconds[0])
        print(f"ratio images / cache:   {images.seconds[0] / best:8.1f}x  (the cache's faster epoch)")
        read = read_seconds(data)
        print(f"of which data (loader alone, no model): {read:.2f} s; the rest is the decoder's steps")
        print(f"fill + one cached epoch vs one image epoch: {(fill + best) / images.seconds[0]:.2f}x the time")
        print(f"step 0 loss: from images {images.first_loss:.6f}, from cache {filled.first_loss:.6f}")


if __name__ == "__main__":
    main()
