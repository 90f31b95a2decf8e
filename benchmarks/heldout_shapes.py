"""A held-out variant of the built-in shapes data, for testing recipes that were tuned on the other two: SCST gain.

Other scene statistics (one to five objects in one to three groups, a checkered or dotted background, shapes drawn
as outlines or filled), other kinds and colours (hexagons and stars; orange, pink, cyan, brown), and other words and
templates ("Three pink stars and an orange ring are scattered over a dotted backdrop."). It is written in COCO
captions format and trained through the COCO path, as users' own data would be; nothing in the configs is tuned on it.

    python benchmarks/heldout_shapes.py --out data/heldout            # writes the data and prints the two commands
    python benchmarks/heldout_shapes.py --out data/heldout --run      # also runs XE then SCST and prints the gain
    python benchmarks/heldout_shapes.py --out data/heldout --report RUN_DIR ...   # what tested runs got right

The runs use configs/shapes_hard.yaml and configs/shapes_hard_scst.yaml unchanged except for the data paths.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"  # found from any working directory
sys.path.insert(0, str(ROOT))
from captioning.data.shapes import write_splits  # noqa: E402
from captioning.metrics.cider import CiderD  # noqa: E402
from captioning.metrics.tokenize import ptb_tokenize, tokenize_lines  # noqa: E402

COLOURS = {"orange": (240, 140, 30), "pink": (235, 110, 180), "cyan": (40, 200, 210), "brown": (130, 80, 40)}
KINDS = {"hexagon": 6, "star": 5, "ring": 0, "square": 4}  # polygon corners; a ring is a circle outline
PLURAL = {"hexagon": "hexagons", "star": "stars", "ring": "rings", "square": "squares"}
COUNT_WORDS = ("no", "an", "two", "three", "four", "five")
SPLITS = {"train": 4000, "val": 250, "test": 250}


def _scene(rng: random.Random, size: int) -> list[dict]:
    while True:
        total, groups = rng.randint(1, 5), rng.randint(1, 3)
        groups = min(groups, total)
        cuts = sorted(rng.sample(range(1, total), groups - 1)) if groups > 1 else []
        counts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        kinds = rng.sample([(c, k) for c in COLOURS for k in KINDS], groups)
        scene = []
        for (colour, kind), count in zip(kinds, counts, strict=True):
            half = size * rng.uniform(0.07, 0.11)
            for _ in range(count):
                for _attempt in range(100):
                    x, y = rng.uniform(half + 2, size - half - 2), rng.uniform(half + 2, size - half - 2)
                    if all(math.hypot(x - s["x"], y - s["y"]) > half + s["half"] + 3 for s in scene):
                        scene.append({"colour": colour, "kind": kind, "x": x, "y": y, "half": half})
                        break
        if len(scene) == total:
            return scene


def _draw(scene: list[dict], background: str, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (225, 225, 215))
    draw = ImageDraw.Draw(image)
    step = 16
    for i in range(0, size, step):
        for j in range(0, size, step):
            if background == "checkered" and (i // step + j // step) % 2:
                draw.rectangle([i, j, i + step, j + step], fill=(205, 205, 195))
            elif background == "dotted":
                draw.ellipse([i + 6, j + 6, i + 9, j + 9], fill=(190, 190, 180))
    for s in scene:
        x, y, h, fill = s["x"], s["y"], s["half"], COLOURS[s["colour"]]
        corners = KINDS[s["kind"]]
        if corners == 0:
            draw.ellipse([x - h, y - h, x + h, y + h], outline=fill, width=max(2, int(h / 3)))
            continue
        radii = [h, h * 0.45] * corners if s["kind"] == "star" else [h] * corners
        angles = [2 * math.pi * i / len(radii) - math.pi / 2 for i in range(len(radii))]  # the first corner on top
        points = [(x + r * math.cos(a), y + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(points, fill=fill)
    return image


# Wordings: "{total}" is "3 objects", "{listing}" the groups in some order ("two pink stars, an orange ring and ...").
TEMPLATES = (
    "{listing} {verb} scattered over a {background} backdrop",
    "on a {background} backdrop {verb} {listing}",
    "this {background} card shows {listing}",
    "{total} in total: {listing}",
    "someone drew {listing}",
    "{listing}",
    "a {background} pattern behind {listing}",
)


def _groups(scene: list[dict]) -> list[tuple[tuple[str, str], int]]:
    """((colour, kind), count) of each group of the scene, in the order the scene first shows them."""
    groups: dict[tuple, int] = {}
    for s in scene:
        groups[(s["colour"], s["kind"])] = groups.get((s["colour"], s["kind"]), 0) + 1
    return list(groups.items())


def _caption(template: str, scene: list[dict], background: str, groups: list) -> str:
    parts = [
        f"{COUNT_WORDS[n] if n > 1 else ('an' if colour[0] in 'aeiou' else 'a')} {colour} "
        f"{PLURAL[kind] if n > 1 else kind}"
        for (colour, kind), n in groups
    ]
    listing = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    total = f"{len(scene)} object{'s' * (len(scene) > 1)}"
    text = template.format(listing=listing, verb="is" if len(scene) == 1 else "are", background=background, total=total)
    return f"{text[0].upper()}{text[1:]}."


def _describe(scene: list[dict], background: str, rng: random.Random) -> list[str]:
    """Five captions: five of the wordings, each listing the groups in its own random order."""
    groups = _groups(scene)
    return [_caption(t, scene, background, rng.sample(groups, len(groups))) for t in rng.sample(TEMPLATES, 5)]


def true_captions(scene: list[dict], background: str) -> dict[str, list[str]]:
    """Every caption that describes the scene right, by wording: each template with the groups in every order."""
    groups = _groups(scene)
    orders = list(itertools.permutations(groups))
    return {t: [_caption(t, scene, background, list(order)) for order in orders] for t in TEMPLATES}


def _example(rng: random.Random, size: int):
    scene, background = _scene(rng, size), rng.choice(["checkered", "dotted", "plain"])
    fields = {"scene": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()} for s in scene]}
    fields["background"] = background
    return _draw(scene, background, size), fields, _describe(scene, background, rng)


def describes_scene(caption: str, captions: dict[str, list[str]]) -> bool:
    """Whether `caption` is one of a scene's `true_captions`, compared as evaluation reads them (PTB-tokenized)."""
    return ptb_tokenize(caption) in set(tokenize_lines([c for wording in captions.values() for c in wording]))


def wording_report(annotations: Path, predictions: Path) -> dict[str, float]:
    """What a run's test captions get right, and what their wording scores against the best a model can do.

    scene_right: the share of captions that describe the scene exactly (every group with its colour, kind and count,
    and the background where the wording names it), in any of the wordings and orders. CIDEr_right: their mean
    CIDEr-D. best_wording: the mean CIDEr-D of a model that is always right and words the scenes with as many objects
    and groups alike, in the wording that scores best on average over them, the groups in any order (the references
    list them in random orders). No model can know which five wordings an image's references use, so a model that
    describes every scene right scores about this.
    """
    data = json.loads(annotations.read_text())
    references: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    cider = CiderD(references)  # the test references' document frequencies, as evaluation uses
    written = {p["image_id"]: p["caption"] for p in json.loads(predictions.read_text())}
    ids = [image["id"] for image in data["images"]]
    scores = cider.score_batch([written[i] for i in ids], ids)
    right, by_class = [], {}
    for image in data["images"]:
        captions = true_captions(image["scene"], image["background"])
        right.append(describes_scene(written[image["id"]], captions))
        wordings = by_class.setdefault((len(image["scene"]), len(_groups(image["scene"]))), {})
        for template, wording in captions.items():  # the mean over the listing orders
            wordings.setdefault(template, []).append(cider.score_batch(wording, [image["id"]] * len(wording)).mean())
    right = np.array(right)
    best = sum(max(sum(s) for s in wordings.values()) for wordings in by_class.values()) / len(ids)
    right_mean = scores[right].mean() if right.any() else float("nan")
    return {"CIDEr": scores.mean(), "scene_right": right.mean(), "CIDEr_right": right_mean, "best_wording": best}


def _print_report(name: str, report: dict[str, float]) -> None:
    print(
        f"{name}: test CIDEr-D {report['CIDEr']:.3f}; the scene described right {report['scene_right']:.1%}, "
        f"their CIDEr-D {report['CIDEr_right']:.3f} against {report['best_wording']:.3f} for the best wording"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/heldout", type=Path)
    parser.add_argument("--seed", default=0, type=int, help="the configs' seed_everything for both runs")
    parser.add_argument("--run", action="store_true", help="train XE then SCST with the shipped configs")
    parser.add_argument("--report", nargs="+", type=Path, metavar="RUN", help="only report on these tested runs")
    args = parser.parse_args()
    write_splits(args.out, {"variant": "heldout", "version": 2}, _example, 128, SPLITS, seed=100)
    test_annotations = args.out / "annotations" / "captions_test.json"
    if args.report:
        for run in args.report:
            _print_report(str(run), wording_report(test_annotations, run / "predictions.json"))
        return
    splits = ("train", "val", "test")
    data = [
        "--data.dataset", "coco", "--data.root", "null",
        "--data.annotations", json.dumps({s: str(args.out / "annotations" / f"captions_{s}.json") for s in splits}),
        "--data.images", json.dumps({s: str(args.out / s) for s in splits}),
        "--seed_everything", str(args.seed), "--trainer.logger.init_args.save_dir", str(args.out / "runs"),
    ]  # fmt: skip
    xe = ["fit", "--config", str(CONFIGS / "shapes_hard.yaml"), *data, "--trainer.logger.init_args.name", "xe"]
    print("XE:  ", shlex.join(["captioning", *xe]))
    if not args.run:
        return
    subprocess.run([sys.executable, "-m", "captioning", *xe], check=True)
    xe_run = sorted((args.out / "runs" / "xe").iterdir(), key=lambda p: int(p.name.split("_")[1]))[-1]
    scst = ["fit", "--config", str(CONFIGS / "shapes_hard_scst.yaml"), *data, "--trainer.logger.init_args.name", "scst"]
    scst += ["--model.init_from", str(xe_run / "checkpoints" / "best.ckpt")]
    scst += ["--data.feature_cache", str(args.out / "runs" / "scst_features")]  # the tokens of this XE run's encoder
    print("SCST:", shlex.join(["captioning", *scst]))
    subprocess.run([sys.executable, "-m", "captioning", *scst], check=True)
    scst_run = sorted((args.out / "runs" / "scst").iterdir(), key=lambda p: int(p.name.split("_")[1]))[-1]
    reports = {name: wording_report(test_annotations, run / "predictions.json") for name, run in
               (("XE", xe_run), ("SCST", scst_run))}  # fmt: skip
    for name, report in reports.items():
        _print_report(name, report)
    before, after = reports["XE"]["CIDEr"], reports["SCST"]["CIDEr"]
    print(f"test CIDEr-D: XE {before:.3f}, SCST {after:.3f}, SCST / XE = {after / before:.3f}")


if __name__ == "__main__":
    main()
