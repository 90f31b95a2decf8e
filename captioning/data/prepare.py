"""`captioning prepare`: packs a split into LitData chunks that training and evaluation stream (`data.format: litdata`).

The images and captions come from the same settings as training (a config's `data:` section, or flags), read by the
datamodule's `load_records`, so every source works: the built-in shapes, COCO caption files, Karpathy splits, an
ImageFolder with `metadata.jsonl` or `.csv`, Parquet files (their images are decoded from the bytes they hold). Each
image is stored once, resized to a square at the size training needs, as JPEG, with its id and all of its captions.

    captioning prepare --config configs/coco.yaml --split train --out /data/coco-packed/train
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from captioning.data.streaming import CAPTIONS_FILE, MANIFEST_FILE, PackRecord, coco_captions, is_remote
from captioning.errors import UserError
from captioning.files import write_json

SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning prepare",
        description="Pack a split into LitData chunks (JPEG at the training size, with ids and captions).",
    )
    parser.add_argument("--config", help="a training config: its data section names the images and captions")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, help="an empty or new local folder (copy it to s3://... after)")
    parser.add_argument(
        "--dataset", choices=("shapes", "coco", "karpathy", "folder", "parquet"), help="overrides data.dataset"
    )
    parser.add_argument(
        "--root",
        help="overrides data.root (shapes: its folder; karpathy: the image root; folder: the ImageFolder with "
        "metadata.jsonl or .csv; parquet: a .parquet file or a folder of them)",
    )
    parser.add_argument(
        "--split-fractions",
        type=split_fractions,
        help="folder, parquet without splits: overrides data.split_fractions, e.g. train=0.8,val=0.1,test=0.1",
    )
    parser.add_argument("--annotations", help="coco: the split's caption annotation file")
    parser.add_argument("--images", help="coco: the split's image folder")
    parser.add_argument("--karpathy-file", help="karpathy: dataset_coco.json, dataset_flickr8k.json, ...")
    parser.add_argument("--encoder", help="overrides model.encoder (its data config sets size and resampling)")
    parser.add_argument(
        "--size",
        type=int,
        help="side of the stored square; default: the model's input size S, or round(S * 8 / 7) for a training "
        "split with data.augment, so that random crops keep their detail (256 for 224)",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="packing processes")
    parser.add_argument("--chunk-bytes", default="64MB", help="size of each chunk file (default 64MB)")
    return parser


def data_settings(args: argparse.Namespace) -> tuple[dict, str, int | None]:
    """The datamodule's settings (the config's data section with the flags over it), encoder, image size."""
    from captioning.data.datamodule import CaptionDataModule

    config = _read_config(args.config) if args.config else {}
    data, model = dict(config.get("data") or {}), dict(config.get("model") or {})
    known = set(inspect.signature(CaptionDataModule.__init__).parameters) - {"self"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{args.config}: unknown data setting '{unknown[0]}'")
    for flag, key in (("dataset", "dataset"), ("root", "root"), ("karpathy_file", "karpathy_file")):
        if getattr(args, flag):
            data[key] = getattr(args, flag)
    if args.split_fractions:
        data["split_fractions"] = args.split_fractions
    if args.annotations:
        data["annotations"] = {**(data.get("annotations") or {}), args.split: args.annotations}
    if args.images:
        data["images"] = {**(data.get("images") or {}), args.split: args.images}
    encoder = args.encoder or model.get("encoder") or data.get("encoder") or "test_convnext"
    image_size = model.get("image_size", data.get("image_size"))
    data.update(encoder=encoder, image_size=image_size)
    return data, encoder, image_size


def split_fractions(text: str) -> dict[str, float]:
    """`train=0.8,val=0.1,test=0.1` as {"train": 0.8, "val": 0.1, "test": 0.1}."""
    fractions = {}
    for item in text.split(","):
        split, _, value = item.partition("=")
        try:
            fractions[split.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{item}': expected SPLIT=FRACTION, e.g. train=0.8") from None
    return fractions


def _read_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config not found: {file}")
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{file}: not a valid YAML file ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a mapping at the top level")
    return config


def stored_size(encoder: str, image_size: int | None, split: str, augment: bool) -> tuple[int, str]:
    """The stored square's side and the resampling, mirroring `build_transform`.

    Without augmentation training and evaluation resize to the input size S, so storing S makes that resize a copy.
    A training split with augmentation gets a random crop of 60 to 100% of the area; storing 8/7 S (the usual
    256 for 224) lets a crop of three quarters of the area fill S from its own pixels, not upsampled ones.
    """
    from captioning.data.transforms import data_config

    config = data_config(encoder, image_size)
    side = int(config["input_size"][-1])
    size = round(side * 8 / 7) if split == "train" and augment else side
    return size, config.get("interpolation", "bicubic")


def pack(records: list, out: Path, pack_record: PackRecord, workers: int, chunk_bytes: str) -> int:
    """Writes the records' samples as chunks under `out`; returns how many were written (unreadable images are
    left out)."""
    from litdata import optimize

    optimize(
        pack_record,
        records,
        output_dir=str(out),
        chunk_bytes=chunk_bytes,
        num_workers=workers,
        reorder_files=False,  # inputs are records, not files
        # The parent has loaded torch but run nothing on threads or a GPU, so forked workers are safe and start at
        # once; spawned ones (LitData's default) would each import torch and Lightning again. Windows cannot fork.
        start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
        verbose=False,
    )
    index = yaml.safe_load((out / "index.json").read_text(encoding="utf-8"))  # JSON is YAML
    return sum(chunk["chunk_size"] for chunk in index["chunks"])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `captioning prepare` (`argv` excludes the word "prepare"); returns the exit status."""
    args = build_parser().parse_args(argv)
    if is_remote(args.out):
        raise UserError(f"--out {args.out}: pack into a local folder, then copy it (e.g. `aws s3 sync DIR URL`)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: not an empty folder; choose a new one or delete it")
    if args.size is not None and args.size < 8:
        raise UserError(f"--size {args.size}: must be at least 8 pixels")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality {args.quality}: must be between 1 and 100")

    from captioning.data.datamodule import CaptionDataModule

    data, encoder, image_size = data_settings(args)
    datamodule = CaptionDataModule(**{**data, "format": "folder"})
    datamodule.prepare_data()  # the built-in shapes are written on first use
    records = datamodule.load_records(args.split)
    size, interpolation = stored_size(encoder, image_size, args.split, bool(datamodule.hparams.augment))
    size = args.size or size

    start = time.perf_counter()
    try:
        count = pack(records, out, PackRecord(size, interpolation, args.quality), args.workers, args.chunk_bytes)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a half-packed split must not look like a packed one
        raise
    seconds = time.perf_counter() - start
    write_json(out / CAPTIONS_FILE, coco_captions(records))
    keys = ("dataset", "root", "annotations", "images", "karpathy_file", "split_fractions")
    source = {key: data.get(key) for key in keys}
    manifest = {
        "split": args.split,
        "count": count,
        "unreadable": len(records) - count,
        "image_size": size,
        "interpolation": interpolation,
        "jpeg_quality": args.quality,
        "encoder": encoder,
        "source": {key: value for key, value in source.items() if value},
        "captions_file": CAPTIONS_FILE,
    }
    write_json(out / MANIFEST_FILE, manifest)
    left_out = f" ({len(records) - count} unreadable, left out)" if count < len(records) else ""
    print(f"packed {count} images{left_out} of split '{args.split}' at {size}x{size} into {out}")
    print(f"{count / seconds:.1f} images/s with {args.workers} workers")
    return 0
