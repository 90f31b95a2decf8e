"""`captioning caption`: caption image files, folders and globs with a trained checkpoint.

Prints one line per image (`path<TAB>caption`, or a JSON object per line); an unreadable image gets a one-line
error naming the file on stderr while the others are still captioned, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioning caption", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, folders or glob patterns")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `captioning fit`")
    parser.add_argument("--max-length", type=int, default=None, help="at most this many tokens per caption")
    parser.add_argument("--batch-size", type=int, default=16, help="images captioned together")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if present)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text", help="output lines")
    return parser


def expand(inputs: list[str]) -> Iterator[Path]:
    """Files as given; folders as their image files, sorted; glob patterns as their matches."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif not path.exists() and glob.has_magic(item):
            yield from (Path(p) for p in sorted(glob.glob(item, recursive=True)))
        else:
            yield path


def main(args: list[str] | None = None) -> int:
    options = build_parser().parse_args(args)
    from captioning.data.transforms import load_image
    from captioning.inference import Captioner

    try:
        captioner = Captioner.from_checkpoint(options.checkpoint, device=options.device)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = list(expand(options.images))
    if not paths:
        print("error: no images found in " + " ".join(options.images), file=sys.stderr)
        return 2
    failures = 0
    for start in range(0, len(paths), options.batch_size):
        batch = []
        for path in paths[start : start + options.batch_size]:
            try:
                batch.append((path, load_image(path)))
            except OSError as error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
        captions = captioner.caption([image for _, image in batch], max_length=options.max_length) if batch else []
        for (path, _), caption in zip(batch, captions):
            if options.format == "jsonl":
                print(json.dumps({"image": str(path), "caption": caption.text, "score": round(caption.score, 4)}))
            else:
                print(f"{path}\t{caption.text}")
        sys.stdout.flush()
    return 1 if failures else 0
