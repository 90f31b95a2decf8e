"""Test helpers shared by several modules: a tiny captioner trained for real steps, and image files of every kind."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captioning.checkpoint import checkpoint_metadata
from captioning.data.coco import load_coco_captions
from captioning.data.shapes import annotation_path, ensure_shapes
from captioning.data.transforms import build_transform, load_image
from captioning.model import CaptioningModel, ModelConfig
from captioning.text.tokenizer import CaptionTokenizer
from tests.conftest import TINY_MODEL

SPLITS = {"train": 512, "test": 32}


@functools.cache
def train_tiny_checkpoint(folder: Path, steps: int = 600) -> Path:
    """Trains the tiny model on shapes for `steps` real steps and writes a checkpoint as training does.

    The encoder is frozen (random timm weights) and its tokens are computed once, so the decoder trains in about
    twenty seconds on two CPU cores. Cached: every test module of the session gets the same checkpoint.
    """
    path = folder / "tiny.ckpt"
    root = folder / "shapes"
    ensure_shapes(root, image_size=64, split_sizes=SPLITS)
    records = load_coco_captions(annotation_path(root, "train"), root / "train")
    tokenizer = CaptionTokenizer.train([c for r in records for c in r.captions], min_frequency=1)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, freeze_encoder=True, dropout=0.0, **TINY_MODEL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and much faster on a busy machine
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        model = CaptioningModel(config)
        transform = build_transform(config.encoder, config.image_size)
        with torch.no_grad():
            images = torch.stack([transform(load_image(r.path)) for r in records])  # (N, 3, 64, 64)
            features = model.encoder.eval()(images)  # (N, M, C_enc), frozen: computed once
        K = 5
        tokens = tokenizer.encode([c for r in records for c in r.captions[:K]], config.max_length)  # (N*K, T)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        model.train()
        for _ in range(steps):
            index = torch.randint(len(records), (32,), generator=generator)  # (B,)
            batch = tokens[(index[:, None] * K + torch.arange(K)).flatten()]  # (B*K, T): K captions per image
            logits = model.decoder(batch[:, :-1], model.project(features[index]))  # (B*K, T-1, V)
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), ignore_index=tokenizer.pad_id)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    trained_on = {"dataset": "shapes", "images": len(records)}
    torch.save({"captioning": checkpoint_metadata(config, tokenizer, trained_on), "state_dict": state}, path)
    return path


def odd_images(folder: Path) -> dict[str, Path]:
    """Images as they come from cameras, phones, scanners and the web, written into `folder`."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    files = {
        "grayscale.png": rgb.convert("L"),
        "gray-alpha.png": rgb.convert("LA"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "16-bit.png": Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)),
        "tiny.png": Image.new("RGB", (1, 1), (200, 10, 10)),
        "huge.jpg": Image.new("RGB", (6000, 4000), (30, 120, 200)),
        "bilevel.bmp": rgb.convert("1"),
    }
    paths = {}
    for name, image in files.items():
        paths[name] = folder / name
        image.save(paths[name])
    transparent = rgb.convert("P")
    transparent.info["transparency"] = 0
    paths["palette-transparent.png"] = folder / "palette-transparent.png"
    transparent.save(paths["palette-transparent.png"], transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    paths["exif-rotated.jpg"] = folder / "exif-rotated.jpg"
    rgb.save(paths["exif-rotated.jpg"], exif=exif)
    return paths


def broken_images(folder: Path) -> dict[str, Path]:
    """A truncated JPEG, a text file named like an image, and a decompression bomb (tiny on disk)."""
    good = folder / "source.jpg"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(good)
    data = good.read_bytes()
    paths = {"truncated.jpg": folder / "truncated.jpg", "not-an-image.jpg": folder / "not-an-image.jpg"}
    paths["truncated.jpg"].write_bytes(data[: len(data) // 2])
    paths["not-an-image.jpg"].write_text("this is not a picture\n")
    paths["bomb.png"] = folder / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(paths["bomb.png"])  # 90 Mpx, over Pillow's 89.5 Mpx limit
    good.unlink()
    return paths
