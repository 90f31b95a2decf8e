"""Images per second per core of the data pipeline (decode, EXIF, RGB, resize, normalise), old and new, in one run.

(a) old: `load_image(path)` as it was, decoding at full size; torchvision's PIL `Resize` (bicubic, antialiased),
    `ToTensor` and `Normalize`, as `build_transform` was before;
(b) new: `load_image(path, size=transform.decode_size)` decodes a JPEG at the smallest DCT scale that covers the model
    input (Pillow's `draft`), and `build_transform` resizes once on 8-bit pixels in torch and normalises in one pass.
(c) packed: the photos packed once as `captioning prepare` does (LitData chunks of JPEGs stored at the model input
    size), then each read back through `CaptionStreamingDataset`: chunk read, decode and the same transform. This
    is the data path of the COCO job; the one-time packing is timed and reported beside it.
One thread, CPU time of this process (so other processes on the machine do not count); the best of `--repeats`.
Also prints the decoding alone (full size and draft) and how far the new tensors are from the old ones.

    python benchmarks/decode_bench.py [--size 224] [--encoder vit_small_patch16_224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from captioning.data.coco import ImageRecord
from captioning.data.prepare import pack, stored_size
from captioning.data.streaming import CAPTIONS_FILE, CaptionStreamingDataset, PackRecord, coco_captions
from captioning.data.transforms import build_transform, data_config, load_image, to_rgb
from captioning.files import write_json

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco-val2017-mini" / "val2017"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="a folder of JPEGs")
    parser.add_argument("--encoder", default="vit_small_patch16_224", help="timm name: mean, std, interpolation")
    parser.add_argument("--size", type=int, default=224, help="model input size S")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the photos; each pipeline's best is kept")
    return parser.parse_args()


def old_transform(encoder: str, size: int) -> T.Compose:
    """The pipeline before this change: PIL resize, then ToTensor and Normalize (three passes over the pixels)."""
    config = data_config(encoder, size)
    mode = T.InterpolationMode(config.get("interpolation", "bicubic"))
    resize = T.Resize(config["input_size"][-2:], interpolation=mode, antialias=True)
    return T.Compose([resize, T.ToTensor(), T.Normalize(config["mean"], config["std"])])


def old_load_image(path: Path) -> Image.Image:
    """`load_image` before this change: full-size decode, EXIF transpose into a copy, conversion into another."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def decode_only(path: Path, size: tuple[int, int] | None) -> None:
    with Image.open(path) as image:
        if size is not None:
            image.draft(image.mode, size)
        image.load()


def packed_split(paths: list[Path], folder: Path, encoder: str, size: int) -> tuple[CaptionStreamingDataset, float]:
    """The photos packed into `folder` as `captioning prepare` packs an evaluation split (no augmentation), and the
    seconds that took (wall time: LitData packs in a worker process)."""
    records = [ImageRecord(index, path, ["a photo"]) for index, path in enumerate(paths)]
    side, interpolation = stored_size(encoder, size, "val", augment=False)
    started = time.perf_counter()
    pack(records, folder, PackRecord(side, interpolation), workers=1, chunk_bytes="64MB")
    seconds = time.perf_counter() - started
    write_json(folder / CAPTIONS_FILE, coco_captions(records))
    return CaptionStreamingDataset(str(folder), build_transform(encoder, size)), seconds


def rate(work: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    """Images per CPU second of this process, best of `repeats` passes."""
    best = 0.0
    for _ in range(repeats):
        started = time.process_time()
        for path in paths:
            work(path)
        best = max(best, len(paths) / max(1e-9, time.process_time() - started))
    return best


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    paths = sorted(args.photos.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no JPEGs in {args.photos} (see ../shared/data/README.md)")
    old = old_transform(args.encoder, args.size)
    new = build_transform(args.encoder, args.size)
    size = new.decode_size
    folder = Path(tempfile.mkdtemp(prefix="decode-bench-")) / "packed"
    packed, pack_seconds = packed_split(paths, folder, args.encoder, args.size)
    index = {path: position for position, path in enumerate(paths)}
    pipelines = {
        "old: full decode + PIL resize + ToTensor + Normalize": lambda p: old(old_load_image(p)),
        "new: draft decode + one uint8 resize, fused normalise": lambda p: new(load_image(p, size=size)),
        "packed: chunk read + decode at input size + transform": lambda p: packed[index[p]],
        "decode only, full size": lambda p: decode_only(p, None),
        "decode only, draft": lambda p: decode_only(p, size),
    }
    for work in pipelines.values():  # warm up: file cache, allocator, first-call costs
        work(paths[0])
    rates = {name: rate(work, paths, args.repeats) for name, work in pipelines.items()}
    print(f"{len(paths)} photos from {args.photos}, {args.encoder} input {args.size} px, 1 thread, CPU time")
    for name, value in rates.items():
        print(f"  {name:<55} {value:7.1f} images/s")
    old_rate, new_rate, packed_rate, full, drafted = rates.values()
    print(f"  new / old: {new_rate / old_rate:.2f}x (image folders)")
    print(f"  packed / old: {packed_rate / old_rate:.2f}x (LitData chunks)")
    print(f"  draft / full decode alone: {drafted / full:.2f}x")
    stored = sum(file.stat().st_size for file in folder.glob("chunk-*.bin"))
    source = sum(path.stat().st_size for path in paths)
    print(
        f"  packing, once: {pack_seconds:.1f} s wall ({len(paths) / pack_seconds:.0f} images/s, one worker); "
        f"{stored / 2**20:.1f} MiB of chunks from {source / 2**20:.1f} MiB of JPEGs"
    )
    scaled = sum(load_image(p, size=size).size != load_image(p).size for p in paths)
    print(f"  {scaled} of {len(paths)} photos decoded at a DCT scale below full size")
    level = 2 / 255  # one level of 255 in normalised units at std 0.5 (ViT-S's mean and std)
    tensors = {"new": lambda p: new(load_image(p, size=size)), "packed": lambda p: packed[index[p]]["image"]}
    for name, tensor in tensors.items():
        difference = torch.stack([(tensor(p) - old(old_load_image(p))).abs().mean() for p in paths]).mean()
        print(f"  {name} vs old tensors: mean abs difference {difference:.4f} (one level of 255: {level:.4f})")


if __name__ == "__main__":
    main()
