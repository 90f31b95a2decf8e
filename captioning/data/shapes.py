"""The built-in "shapes" dataset: seeded synthetic scenes with five captions each, in COCO captions format.

One to three coloured shapes per image; captions name colour, kind, size, position and spatial relations
("a small red circle above a blue square"), so they cannot be guessed without looking. Each image record keeps
its scene, so `grounded_accuracy` can check a caption against the truth. A cousin of the synthetic
"ShapeWorld" captioning data (Kuhnle & Copestake, 2017), small enough to train on a laptop CPU in minutes.
`write_splits` writes any setting's splits in COCO captions format; the hard setting is in shapes_hard.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw

from captioning.errors import UserError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190)}  # fmt: skip
KINDS = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.11, "large": 0.2}  # half-width as a share of the image side
SPLIT_SIZES = {"train": 4000, "val": 200, "test": 200}
GENERATOR_VERSION = 2  # 2: most captions place their shapes
LANGUAGES = ("en", "zh")  # of the captions; Chinese in shapes_zh.py


def annotation_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"captions_{split}.json"


def ensure_shapes(
    root: str | Path,
    image_size: int = 128,
    split_sizes: dict[str, int] | None = None,
    seed: int = 0,
    language: str = "en",
):
    """Writes the dataset under `root` unless the same one is already there.

    Layout: `root/{train,val,test}/*.png` and `root/annotations/captions_{split}.json`. `language` ("en" or "zh")
    is that of the captions; both have the same images. The generator settings name a language other than English
    (English data keeps the settings it always had), so switching language rewrites the splits.
    """
    generator = {"version": GENERATOR_VERSION}
    if _check_language(language) != "en":
        from captioning.data import shapes_zh  # builds on this module

        generator |= {"language": language, "language_version": shapes_zh.VERSION}
    example = partial(_example, language=language)
    write_splits(root, generator, example, image_size, split_sizes or SPLIT_SIZES, seed)


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise UserError(f"shapes captions in language {language!r}: expected one of {', '.join(LANGUAGES)}")
    return language


def _example(rng: random.Random, image_size: int, language: str = "en") -> tuple[Image.Image, dict, list[str]]:
    scene = random_scene(rng, image_size)
    return draw_scene(scene, image_size), {"scene": scene}, describe(scene, rng, image_size, language)


def write_splits(
    root: str | Path,
    generator: dict,
    example: Callable[[random.Random, int], tuple[Image.Image, dict, list[str]]],
    image_size: int,
    split_sizes: dict[str, int],
    seed: int,
    description: str = "captioning built-in shapes dataset",
) -> None:
    """Writes each split that is missing or was made with other settings, in COCO captions format.

    Args:
        root: the dataset's folder.
        generator: what identifies the generator (its version, its setting), kept in the files' `info`.
        example: `(rng, image_size) -> (image, fields of its "images" entry such as the scene, five captions)`.
        image_size: side of the images in pixels.
        split_sizes: number of images per split; split i is drawn with seed `seed + i`.
        seed: the seed of the first split.
        description: the files' `info.description`.

    Each split is written to a temporary folder and renamed into place, so an interrupted run never leaves a
    half-written split.
    """
    root = Path(root)
    for index, (split, count) in enumerate(split_sizes.items()):
        settings = {**generator, "image_size": image_size, "count": count, "seed": seed + index}
        annotations = annotation_path(root, split)
        if annotations.exists() and json.loads(annotations.read_text()).get("info", {}).get("generator") == settings:
            continue
        _write_split(root, split, settings, example, description)


def _write_split(root: Path, split: str, settings: dict, example, description: str) -> None:
    rng = random.Random(settings["seed"])
    staging = root / f".{split}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, settings["count"] + 1):
        size = settings["image_size"]
        image, fields, captions = example(rng, size)
        file_name = f"{image_id:06d}.png"
        image.save(staging / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size, **fields})
        for caption in captions:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    info = {"description": description, "generator": settings}
    (staging / "captions.json").write_text(json.dumps({"info": info, "images": images, "annotations": annotations}))
    shutil.rmtree(root / split, ignore_errors=True)
    os.replace(staging / split, root / split)
    annotation_path(root, split).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "captions.json", annotation_path(root, split))  # written last: marks the split complete
    shutil.rmtree(staging)


def random_scene(rng: random.Random, image_size: int) -> list[dict]:
    """One to three shapes that do not overlap, each with kind, colour, size, centre and bounding box (x, y, w, h)."""
    while True:
        scene = []
        for _ in range(rng.randint(1, 3)):
            size = rng.choice(list(SIZES))
            half = SIZES[size] * image_size
            for _attempt in range(50):
                x, y = rng.uniform(half + 2, image_size - half - 2), rng.uniform(half + 2, image_size - half - 2)
                if all(abs(x - s["x"]) > half + s["half"] + 2 or abs(y - s["y"]) > half + s["half"] + 2 for s in scene):
                    break
            else:
                break
            box = [round(x - half, 1), round(y - half, 1), round(2 * half, 1), round(2 * half, 1)]
            scene.append(
                {"kind": rng.choice(KINDS), "colour": rng.choice(list(COLOURS)), "size": size,
                 "x": round(x, 1), "y": round(y, 1), "half": round(half, 1), "bbox": box}
            )  # fmt: skip
        else:
            return scene


def draw_scene(scene: list[dict], image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for shape in scene:
        draw_shape(draw, shape, COLOURS[shape["colour"]])
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: dict, fill: tuple[int, int, int]) -> None:
    """One shape of its kind, centred at (x, y), `half` wide on each side."""
    x, y, h = shape["x"], shape["y"], shape["half"]
    if shape["kind"] == "circle":
        draw.ellipse([x - h, y - h, x + h, y + h], fill=fill)
    elif shape["kind"] == "square":
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif shape["kind"] == "triangle":
        draw.polygon([(x, y - h), (x + h, y + h), (x - h, y + h)], fill=fill)
    else:
        draw.polygon([(x, y - h), (x + h, y), (x, y + h), (x - h, y)], fill=fill)


def _phrase(shape: dict, with_size: bool) -> str:
    size = f"{shape['size']} " if with_size else ""
    return f"a {size}{shape['colour']} {shape['kind']}"


def _relation(a: dict, b: dict) -> str:
    """Where `a` is relative to `b`, along the axis on which they are further apart."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _place(shape: dict, image_size: int) -> str:
    column = ("left", "middle", "right")[min(2, int(3 * shape["x"] / image_size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * shape["y"] / image_size))]
    return "centre" if row == column == "middle" else f"{row} {column}"


def describe(scene: list[dict], rng: random.Random, image_size: int, language: str = "en") -> list[str]:
    """Five different captions of a scene, each from its own template, naming the shapes in a random order.

    Most templates place the shapes: a lone shape by the ninth of the image it is in, two shapes by their relation
    ("A above B", or "B below A": the order is drawn per caption), three by the relation of two of them. Version 1
    of the generator placed shapes in one caption in four, and a model trained on it placed them at chance.
    `language` "zh" gives the Chinese captions of `shapes_zh.describe_zh`, from the same draws of `rng`.
    """
    if _check_language(language) == "zh":
        from captioning.data.shapes_zh import describe_zh  # builds on this module

        return describe_zh(scene, rng, image_size)
    captions = []
    templates = list(range(5))
    rng.shuffle(templates)
    for template in templates:
        shapes = rng.sample(scene, len(scene))
        phrases = [_phrase(s, with_size=template % 2 == 0) for s in shapes]
        if len(shapes) == 1:
            (a,) = phrases
            place = _place(shapes[0], image_size)
            options = [a, f"there is {a} in the {place}", f"{a} in the {place} on a grey background",
                       f"a picture of {a} in the {place}", f"{a} in the {place}"]  # fmt: skip
        elif len(shapes) == 2:
            a, b = phrases
            relation = _relation(*shapes)  # the shapes come in a random order: both ways round
            options = [f"{a} {relation} {b}", f"{a} and {b}", f"two shapes {a} {relation} {b}",
                       f"there is {a} {relation} {b}", f"{a} is {relation} {b}"]  # fmt: skip
        else:
            a, b, c = phrases
            relation = _relation(*shapes[:2])
            options = [f"{a} {b} and {c}", f"three shapes {a} {relation} {b} and {c}", f"{a} {relation} {b} and {c}",
                       f"there are {a} {relation} {b} and {c}", f"{a} with {b} and {c}"]  # fmt: skip
        captions.append(options[template])
    return captions


def named_shapes(caption: str) -> Counter:
    """The (colour, kind) pairs that a caption names: each kind word with the colour word before it."""
    pairs, colour = Counter(), None
    for word in caption.lower().split():
        if word in COLOURS:
            colour = word
        elif word in KINDS:
            pairs[(colour, word)] += 1
            colour = None
    return pairs


def caption_reader(language: str = "en") -> Callable[[str], Counter]:
    """The reader of the (colour, kind) pairs that captions in `language` name, for `grounded_accuracy(read=...)`."""
    if _check_language(language) == "zh":
        from captioning.data.shapes_zh import named_shapes_zh  # builds on this module

        return named_shapes_zh
    return named_shapes


def caption_matches_scene(caption: str, scene: list[dict], read: Callable[[str], Counter] = named_shapes) -> bool:
    """True when the caption names the colour and kind of every shape in the scene, and no other shape.

    `read` gives the (colour, kind) pairs a caption names, counted; the hard setting's reader understands counts.
    """
    return read(caption) == Counter((s["colour"], s["kind"]) for s in scene)


def grounded_accuracy(captions: dict, scenes: dict, read: Callable[[str], Counter] = named_shapes) -> float:
    """Share of images whose caption names the colour and kind of every shape in their scene correctly."""
    if not captions:
        return 0.0
    return sum(caption_matches_scene(captions[i], scenes[i], read) for i in captions) / len(captions)
