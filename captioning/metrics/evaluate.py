"""``captioning evaluate``: the coco-caption scores of a COCO results file against COCO caption annotations.

Reads ``--annotations`` (COCO captions format: ``{"annotations": [{"image_id", "caption"}, ...]}``) and
``--results`` (``[{"image_id", "caption"}, ...]``), scores the results' images as coco-caption does, prints
a table (or JSON), and writes the scores and per-image scores as JSON on request. Bad input ends with one
line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from captioning.errors import UserError
from captioning.files import write_json
from captioning.metrics.scorer import FAMILIES, CaptionScorer, metric_families
from captioning.metrics.words import ENGLISH, check_language, split_lines


class InputError(UserError):
    """Bad input: the message names the file, the field or the value."""


def _load_json(path: Path, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what} file {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{what} file {path} is not valid JSON (line {err.lineno}: {err.msg})") from None


def _entries(data: object, path: Path, what: str) -> list[tuple[object, str]]:
    """(image_id, caption) of each entry of a list of ``{"image_id", "caption"}`` objects."""
    if not isinstance(data, list):
        raise InputError(f"{what} file {path}: expected a list of {{'image_id', 'caption'}} objects")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise InputError(f"{what} file {path}: entry {i} needs 'image_id' and 'caption' fields")
        image_id, caption = entry["image_id"], entry["caption"]
        if not isinstance(image_id, int | str) or isinstance(image_id, bool):
            raise InputError(f"{what} file {path}: entry {i} has an image_id that is not an integer or string")
        if not isinstance(caption, str):
            raise InputError(f"{what} file {path}: entry {i} (image {image_id}) has a caption that is not a string")
        out.append((image_id, caption))
    return out


def load_annotations(path: Path) -> dict[object, list[str]]:
    """``{image_id: [caption, ...]}`` from a COCO captions file (images without captions are skipped).

    Raises:
        InputError: the file is missing or malformed.
    """
    data = _load_json(path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"annotations file {path}: expected a COCO captions object with an 'annotations' list")
    references: dict[object, list[str]] = {}
    for image_id, caption in _entries(data["annotations"], path, "annotations"):
        references.setdefault(image_id, []).append(caption)
    if not references:
        raise InputError(f"annotations file {path} has no captions")
    return references


def load_results(path: Path, references: dict[object, list[str]]) -> dict[object, str]:
    """``{image_id: caption}`` from a COCO results file, checked against the annotations.

    Raises:
        InputError: malformed file, an image id absent from the annotations, or a duplicate image id.
    """
    predictions: dict[object, str] = {}
    for image_id, caption in _entries(_load_json(path, "results"), path, "results"):
        if image_id not in references:
            raise InputError(f"results file {path}: image id {image_id!r} is not in the annotations")
        if image_id in predictions:
            raise InputError(f"results file {path}: image id {image_id!r} has more than one result")
        predictions[image_id] = caption  # an empty caption scores as one with no words, as in coco-caption
    if not predictions:
        raise InputError(f"results file {path} has no results")
    return predictions


def unrelated_captions(
    predictions: dict, references: dict[object, list[str]], min_images: int = 5, language: str = ENGLISH
) -> str | None:
    """A warning when the captions share no more words with the references of the images they name than with other
    images' references: the annotations of another split (whose image ids overlap), or a model that writes the same
    caption whatever the image. None when they match better, or for fewer than `min_images` images.

    The measure is the share of a caption's distinct words found in the references it is scored against, averaged
    over the images; "other images" are each image's neighbours in the results' order, a few shifts averaged.
    """
    ids = list(predictions)
    if len(ids) < min_images:
        return None
    candidates = [set(words.split()) for words in split_lines([predictions[i] for i in ids], language)]
    vocabularies = [set(" ".join(split_lines(references[i], language)).split()) for i in ids]

    def overlap(shift: int) -> float:
        pairs = zip(candidates, vocabularies[shift:] + vocabularies[:shift], strict=True)
        return sum(len(c & v) / len(c) for c, v in pairs if c) / len(ids)

    own = overlap(0)
    shifts = range(1, min(len(ids), 6))
    others = sum(overlap(shift) for shift in shifts) / len(shifts)
    if own > others + 0.02:
        return None
    return (
        f"the captions share {own:.0%} of their words with the references of the images they name, and "
        f"{others:.0%} with other images' references: are the annotations of the results' split (image ids can "
        "overlap between splits), and does the model look at its images?"
    )


def format_table(scores: dict[str, float], num_images: int) -> str:
    """A two-column table of the overall scores."""
    lines = [f"{'metric':<8}  {'score':>8}"]
    lines += [f"{key:<8}  {value:8.6f}" for key, value in scores.items() if key != "per_image"]
    lines.append(f"({num_images} images)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning evaluate",
        description="Score a COCO results file with the coco-caption metrics (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE).",
    )
    parser.add_argument("--annotations", required=True, type=Path, help="COCO captions JSON (the references)")
    parser.add_argument("--results", required=True, type=Path, help='results JSON: [{"image_id": ..., "caption": ...}]')
    parser.add_argument("--out", type=Path, help="write the overall scores to this JSON file")
    parser.add_argument("--per-image", type=Path, help="write per-image scores to this JSON file")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help=f"metric families (default: all of {' '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--language",
        default=ENGLISH,
        help="the captions' language, which sets how they split into words: en (PTB, as coco-caption; the "
        "default), zh (jieba), ja (characters), or another code (Unicode words)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``captioning evaluate`` (``argv`` excludes the word "evaluate"); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        families = metric_families(args.metrics)
        language = check_language(args.language)
        references = load_annotations(args.annotations)
        predictions = load_results(args.results, references)
    except UserError as err:  # bad input; a plain ValueError is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    left_out = len(references) - len(predictions)
    if left_out:
        print(
            f"warning: {left_out} of {len(references)} annotated images have no result and are left out; "
            f"scoring the {len(predictions)} images of the results, as coco-caption does",
            file=sys.stderr,
        )
    subset = {image_id: references[image_id] for image_id in predictions}
    mismatch = unrelated_captions(predictions, subset, language=language)
    if mismatch:
        print(f"warning: {mismatch}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = CaptionScorer(subset, families, language=language).score(
            predictions, per_image=args.per_image is not None
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    per_image = scores.pop("per_image", None)
    try:
        if args.out is not None:
            write_json(args.out, scores)
        if args.per_image is not None:
            write_json(args.per_image, [{"image_id": i, **s} for i, s in per_image.items()])
    except OSError as err:
        print(f"error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=1) if args.json else format_table(scores, len(predictions)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
