"""`captioning caption`: caption image files, folders and globs with a trained checkpoint or its ONNX export.

Prints one line per image (`path<TAB>caption`, or a JSON object per line) as soon as its batch is done; decodes as
the checkpoint's test did (its `DecodeSpec`: greedy, or beam search after Wu et al., 2016) unless told otherwise, or
by nucleus sampling (Holtzman et al., 2020). A bad image gets a one-line error naming
the file on stderr while the others are still captioned, and the exit status is then 1 (2 for a bad command line
or checkpoint). A progress bar on stderr follows many images when stderr is a terminal. A folder that `captioning
export --format onnx` wrote captions on onnxruntime, without torch (`pip install captioning[onnx]`).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import TextIO

from captioning.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
EXAMPLES = """examples:
  captioning caption --checkpoint last.ckpt photo.jpg holiday/ "scans/**/*.png"
  captioning caption --checkpoint last.ckpt --beam-size 5 --format jsonl holiday/ > captions.jsonl
  captioning caption --checkpoint last.ckpt --sample --top-p 0.9 --seed 0 photo.jpg
  captioning caption --checkpoint last.ckpt --attention-dir maps/ photo.jpg   # maps/photo.png and maps/photo.gif
  captioning caption --checkpoint exported-onnx/ photo.jpg   # onnxruntime, no torch needed
  captioning caption --checkpoint exported/ photo.jpg        # a safetensors export: nothing unpickled
"""
PROGRESS_MIN_IMAGES = 32  # "many images": below this a bar only flickers


def bounded_number(kind: type, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a `kind` number in [low, high] (or (low, high] with low_open), with a clear message."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a{'n integer' if kind is int else ' number'}, got '{text}'"
            ) from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{text} is not in {bounds}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning caption",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, folders or glob patterns")
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT",
        required=True,
        help="checkpoint written by `captioning fit`, or the folder of its export (`captioning export`)",
    )
    search = parser.add_argument_group("search (default: as the checkpoint's validation and test decoded)")
    search.add_argument(
        "--beam-size",
        metavar="K",
        type=bounded_number(int, 1),
        default=None,
        help="beams per image; 1 is greedy (default: the checkpoint's, 3 for checkpoints that do not say)",
    )
    search.add_argument(
        "--length-penalty",
        metavar="ALPHA",
        type=float,
        default=None,
        help="alpha in log P / length^alpha (default: the checkpoint's, 1.0: the mean per token)",
    )
    search.add_argument(
        "--no-repeat-ngram-size",
        metavar="N",
        type=bounded_number(int, 0),
        default=None,
        help="forbid repeating n-grams of this size (default: 0, allowed)",
    )
    search.add_argument(
        "--max-length",
        metavar="N",
        type=bounded_number(int, 1),
        default=None,
        help="at most this many tokens (default: the model's)",
    )
    search.add_argument(
        "--min-length",
        metavar="N",
        type=bounded_number(int, 0),
        default=None,
        help="at least this many words (default: 1)",
    )
    sampling = parser.add_argument_group("sampling (--sample)")
    sampling.add_argument("--sample", action="store_true", help="draw captions (nucleus sampling) instead of search")
    sampling.add_argument(
        "--temperature",
        metavar="T",
        type=bounded_number(float, 0, low_open=True),
        default=None,
        help="< 1 sharper, > 1 flatter (default: 1.0)",
    )
    sampling.add_argument(
        "--top-k", metavar="K", type=bounded_number(int, 0), default=None, help="the k likeliest words only (0: all)"
    )
    sampling.add_argument(
        "--top-p",
        metavar="P",
        type=bounded_number(float, 0, 1, low_open=True),
        default=None,
        help="nucleus: the smallest set of words with this mass (default: 1.0, all)",
    )
    sampling.add_argument("--seed", metavar="SEED", type=int, default=None, help="makes sampling reproducible")
    run = parser.add_argument_group("running")
    run.add_argument(
        "--batch-size",
        metavar="N",
        type=bounded_number(int, 1),
        default=16,
        help="images captioned together (default: 16)",
    )
    run.add_argument(
        "--device",
        metavar="DEVICE",
        default=None,
        help="torch device of a checkpoint, e.g. cpu or cuda (default: cuda if present); an export runs on the CPU",
    )
    run.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="path<TAB>caption (default), or JSON lines with image, caption, score",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr (default: on a terminal, for {PROGRESS_MIN_IMAGES} images or more)",
    )
    run.add_argument(
        "--attention-dir",
        metavar="DIR",
        default=None,
        help="also write, per image, DIR/NAME.png (each word's cross-attention over the image) and DIR/NAME.gif "
        "(the caption word by word); NAME is the image's file name without its suffix",
    )
    return parser


def attention_names(paths: list[Path]) -> list[str]:
    """A distinct file name (no suffix) per image for --attention-dir: its stem, numbered where stems repeat."""
    names, seen = [], set()
    for path in paths:
        name, number = path.stem, 1
        while name in seen:
            number += 1
            name = f"{path.stem}-{number}"
        seen.add(name)
        names.append(name)
    return names


def expand(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given; folders as their image files, sorted; glob patterns as their matches.

    Returns:
        The paths, and an error line for each folder or pattern that holds no image.
    """
    paths, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                errors.append(f"error: {path}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})"
                              + _deeper_hint(path))  # fmt: skip
        elif not path.exists() and glob.has_magic(item):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not found:
                errors.append(f"error: {item}: no file matches this pattern")
        else:
            found = [path]  # a missing file is reported when it is read, in its place in the order
        paths += found
    return paths, errors


def _deeper_hint(folder: Path) -> str:
    """Where a folder's images are one level down or more (a dataset's root): how to caption them."""
    deeper = next((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), None)
    return f"; its subfolders have some (e.g. {deeper}): pass '{folder / '**' / '*'}' for them" if deeper else ""


class _Output:
    """Result lines to stdout and error lines to stderr, written around the progress bar when there is one."""

    def __init__(self, total: int, show: bool | None, format: str) -> None:
        from tqdm import tqdm

        if show is None:
            show = total >= PROGRESS_MIN_IMAGES and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True, disable=not show)
        self.format = format
        self.failures = self.captioned = self.warnings = 0

    def _write(self, line: str, file: TextIO) -> None:
        if self.bar.disable:
            print(line, file=file, flush=True)
        else:
            self.bar.write(line, file=file)

    def caption(self, path: Path, caption) -> None:
        if self.format == "jsonl":
            record = {"image": str(path), "caption": caption.text, "score": round(caption.score, 4)}
            line = json.dumps({**record, "ended": caption.ended}, ensure_ascii=False)
        else:
            line = f"{path}\t{caption.text}"
        self._write(line, sys.stdout)
        if not caption.ended:
            self.warnings += 1
            self._write(f"warning: {path}: the caption reached the length limit without ending; the image may be "
                        "unlike the model's training data", sys.stderr)  # fmt: skip
        self.captioned += 1
        self.bar.update()

    def error(self, message: str, counts_image: bool = True) -> None:
        self.failures += 1
        self._write(" ".join(message.split()), sys.stderr)  # one line, whatever the message holds
        if counts_image:
            self.bar.update()


def onnx_folder(path: str) -> bool:
    """Whether `path` is an ONNX export folder (a folder without the safetensors export's weights)."""
    return Path(path).is_dir() and not (Path(path) / "model.safetensors").is_file()


def load_captioner(path: str, device: str | None):
    """An `OnnxCaptioner` of an ONNX export folder (which needs no torch), or a `Captioner` of a safetensors export
    folder or of a checkpoint."""
    if onnx_folder(path):
        from captioning.onnx_captioner import OnnxCaptioner

        return OnnxCaptioner(path)
    from captioning.inference import Captioner

    if Path(path).is_dir():
        return Captioner.from_pretrained(path, device=device)
    return Captioner.from_checkpoint(path, device=device)


def main(args: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(args)
    if options.sample and options.beam_size not in (None, 1):
        parser.error("--sample draws one caption per image; leave out --beam-size")
    if onnx_folder(options.checkpoint) and options.attention_dir is not None:
        parser.error("--attention-dir needs a checkpoint: an ONNX export writes no attention weights")
    from captioning.images import load_image

    paths, input_errors = expand(options.images)
    try:
        captioner = load_captioner(options.checkpoint, options.device)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    attention_dir = Path(options.attention_dir) if options.attention_dir is not None else None
    if attention_dir is not None:
        try:
            attention_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: --attention-dir {attention_dir}: cannot create the folder ({error})", file=sys.stderr)
            return 2
        from captioning.viz import save_attention
    names = attention_names(paths)
    settings = dict(
        beam_size=options.beam_size,  # None: the checkpoint's spec (see `checkpoint.default_spec`)
        max_length=options.max_length,
        min_length=options.min_length,
        length_penalty=options.length_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        suppress_unk=True,  # a caption for people: never the unknown word
        sample=options.sample,
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        seed=options.seed,
        batch_size=options.batch_size,
    )
    if attention_dir is not None:
        settings["return_attention"] = True
    output = _Output(len(paths), options.progress, options.format)
    for message in input_errors:
        output.error(message, counts_image=False)
    for start in range(0, len(paths), options.batch_size):
        batch, stop = [], start + options.batch_size
        for path, name in zip(paths[start:stop], names[start:stop], strict=True):
            try:
                batch.append((path, load_image(path), name))
            except OSError as error:
                output.error(f"error: {error}")
        # One image that cannot be decoded must not cost the batch: caption them one by one. Only a read error
        # (load_image's OSError; PIL's UnidentifiedImageError is one too): any other error is the model's or the
        # device's, the same for every image, so it ends the run once, with its traceback.
        try:
            captions = captioner.caption([image for _, image, _ in batch], **settings) if batch else []
        except UserError as error:  # settings this model cannot decode with, e.g. a minimum length over its maximum
            output.bar.close()
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError:
            captions = []
            for path, image, _ in batch:
                try:
                    captions += captioner.caption(image, **settings)
                except OSError as error:  # reported per file, the run goes on
                    captions.append(None)
                    output.error(f"error: {path}: cannot caption image ({type(error).__name__}: {error})")
        for (path, image, name), caption in zip(batch, captions, strict=True):
            if caption is None:
                continue
            output.caption(path, caption)
            if attention_dir is not None:
                try:
                    save_attention(image, caption, attention_dir, name)
                except (OSError, ValueError) as error:
                    output.error(f"error: {path}: cannot write its attention maps ({error})", counts_image=False)
    output.bar.close()
    if output.failures:
        print(f"captioned {output.captioned} of {len(paths)} images; {output.failures} error(s) above", file=sys.stderr)
    return 1 if output.failures else 0
