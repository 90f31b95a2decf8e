"""The hard setting of the built-in shapes data: crowded scenes on textured backgrounds, captions as people write them.

Two to six shapes in one to three groups of one colour, kind and size each, so that captions count ("two green
triangles"); low-contrast gradient, striped or noisy backgrounds; five captions per image from varied templates,
capitalised and punctuated, with contractions and hyphens ("There's a large red circle and two blue squares.").
`grounded_accuracy` reads counts and plurals to check a caption against its scene. Built on the basic setting
(shapes.py); hard enough that cross-entropy training on a CPU leaves room for self-critical training (Rennie et al.,
2017, "Self-critical Sequence Training for Image Captioning") to show.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioning.data import shapes
from captioning.data.shapes import COLOURS, KINDS, SPLIT_SIZES, draw_shape, write_splits

SIZES = {"small": 0.075, "large": 0.12}  # half-width as a share of the image side, before a +-15% jitter
BACKGROUNDS = {  # the words that describe each texture
    "gradient": ("shaded", "softly shaded"),
    "stripes": ("striped", "pinstriped"),
    "noise": ("noisy", "grainy"),
}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
KIND_OF_WORD = {**{kind: kind for kind in KINDS}, **{f"{kind}s": kind for kind in KINDS}}  # plurals too
GENERATOR = {"level": "hard", "version": 2}  # 2: most captions name the most numerous group first
TEMPLATES = ("there", "background", "total", "seeing", "picture", "plain", "place", "pair")
SEEING = ("I can see", "you can see", "we're looking at")
PICTURE = ("a picture of", "an image of", "a drawing of")
LARGEST_FIRST = 0.75  # the share of captions that name the most numerous group first; the others use any order


def ensure_shapes(root: str | Path, image_size: int = 128, split_sizes: dict[str, int] | None = None, seed: int = 0):
    """Writes the hard dataset under `root` unless the same one is already there (layout as the basic one's)."""
    description = "captioning built-in shapes dataset, hard setting"
    write_splits(root, GENERATOR, _example, image_size, split_sizes or SPLIT_SIZES, seed, description)


def _example(rng: random.Random, image_size: int) -> tuple[Image.Image, dict, list[str]]:
    scene, background = random_scene(rng, image_size), random_background(rng)
    fields = {"scene": scene, "background": background}
    return draw_scene(scene, background, image_size), fields, describe(scene, background, rng, image_size)


# ------------------------------------------------------------------------------------------------------- scenes
def random_scene(rng: random.Random, image_size: int) -> list[dict]:
    """Two to six shapes that do not overlap, in one to three groups of distinct (colour, kind); each shape has
    kind, colour, size, centre, half-width and bounding box (x, y, w, h), as in the basic setting."""
    while True:
        total = rng.randint(2, 6)
        groups = rng.randint(1, min(3, total))
        cuts = sorted(rng.sample(range(1, total), groups - 1))
        counts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        kinds = rng.sample([(colour, kind) for colour in COLOURS for kind in KINDS], groups)
        scene = []
        for (colour, kind), count in zip(kinds, counts, strict=True):
            size = rng.choice(list(SIZES))
            for _ in range(count):
                shape = _place_shape(rng, scene, SIZES[size] * image_size * rng.uniform(0.85, 1.15), image_size)
                if shape is None:
                    break
                scene.append({"kind": kind, "colour": colour, "size": size, **shape})
        if len(scene) == total:
            return scene


def _place_shape(rng: random.Random, scene: list[dict], half: float, image_size: int) -> dict | None:
    for _attempt in range(100):
        x, y = rng.uniform(half + 2, image_size - half - 2), rng.uniform(half + 2, image_size - half - 2)
        if all(abs(x - s["x"]) > half + s["half"] + 3 or abs(y - s["y"]) > half + s["half"] + 3 for s in scene):
            box = [round(x - half, 1), round(y - half, 1), round(2 * half, 1), round(2 * half, 1)]
            return {"x": round(x, 1), "y": round(y, 1), "half": round(half, 1), "bbox": box}
    return None


def random_background(rng: random.Random) -> dict:
    """A light, nearly grey texture: low in contrast and saturation, so never confused with a shape's colour."""
    kind = rng.choice(list(BACKGROUNDS))
    grey = rng.randint(185, 235)
    background = {"kind": kind, "rgb": [grey + rng.randint(-8, 8) for _ in range(3)], "seed": rng.getrandbits(32)}
    if kind == "gradient":
        background |= {"angle": round(rng.uniform(0, 2 * math.pi), 3), "contrast": rng.randint(25, 50)}
    elif kind == "stripes":
        angle, period = rng.choice([0, 45, 90, 135]), rng.randint(5, 12)
        background |= {"angle": angle, "period": period, "contrast": rng.randint(12, 24)}
    else:
        background |= {"sigma": rng.randint(8, 16)}
    return background


def draw_scene(scene: list[dict], background: dict, image_size: int) -> Image.Image:
    """The background texture, the shapes in slightly varied shades of their colours, then a little pixel noise."""
    noise = np.random.default_rng(background["seed"])
    y, x = np.mgrid[0:image_size, 0:image_size] / image_size  # (S, S) each, in [0, 1)
    pixels = np.broadcast_to(np.array(background["rgb"], dtype=np.float32), (image_size, image_size, 3)).copy()
    if background["kind"] == "gradient":
        along = x * math.cos(background["angle"]) + y * math.sin(background["angle"])
        pixels -= background["contrast"] * (along - along.min())[..., None] / max(np.ptp(along), 1e-6)
    elif background["kind"] == "stripes":
        angle = math.radians(background["angle"])
        along = (x * math.cos(angle) + y * math.sin(angle)) * image_size / background["period"]
        pixels -= background["contrast"] * (np.floor(2 * along) % 2)[..., None]
    else:
        pixels += noise.normal(0, background["sigma"], (image_size, image_size, 1))  # grey grain, not coloured
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in scene:
        fill = tuple(int(np.clip(c + noise.integers(-12, 13), 0, 255)) for c in COLOURS[shape["colour"]])
        draw_shape(draw, shape, fill)
    pixels = np.asarray(image, dtype=np.float32) + noise.normal(0, 4, (image_size, image_size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------- captions
def groups_of(scene: list[dict]) -> list[dict]:
    """The scene's groups, in scene order: colour, kind, size, count and the shapes themselves."""
    groups: dict[tuple, dict] = {}
    for shape in scene:
        group = {"colour": shape["colour"], "kind": shape["kind"], "size": shape["size"], "count": 0, "shapes": []}
        group = groups.setdefault((shape["colour"], shape["kind"]), group)
        group["count"] += 1
        group["shapes"].append(shape)
    return list(groups.values())


def group_phrase(group: dict, with_size: bool, one: str = "a") -> str:
    """ "a red circle", "two small green triangles": a count word, the size when asked, colour and kind."""
    count = one if group["count"] == 1 else NUMBER_WORDS[group["count"]]
    size = f"{group['size']} " if with_size else ""
    return f"{count} {size}{group['colour']} {group['kind']}{'s' if group['count'] > 1 else ''}"


def _listing(phrases: list[str], rng: random.Random) -> str:
    """ "A, B and C" or, as some people write it, "A, B, and C"."""
    if len(phrases) == 1:
        return phrases[0]
    serial_comma = "," if len(phrases) > 2 and rng.random() < 0.5 else ""
    return f"{', '.join(phrases[:-1])}{serial_comma} and {phrases[-1]}"


def _place(shape: dict, image_size: int) -> str:
    """Where a shape is, by the third of the image its centre falls in: corners, edges or the middle."""
    column = ("left", "middle", "right")[min(2, int(3 * shape["x"] / image_size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * shape["y"] / image_size))]
    if row != "middle" and column != "middle":
        return f"in the {row}-{column} corner"
    if row != "middle":
        return f"at the {row}"
    return "in the middle" if column == "middle" else f"on the {column}-hand side"


def describe(scene: list[dict], background: dict, rng: random.Random, image_size: int) -> list[str]:
    """Five different captions of a scene from five of the templates that fit it."""
    groups = groups_of(scene)
    fitting = [
        template
        for template in TEMPLATES
        if (template != "place" or (len(groups) > 1 and any(g["count"] == 1 for g in groups)))
        and (template != "pair" or len(scene) == 2)
    ]
    captions = [_caption(template, scene, background, rng, image_size) for template in rng.sample(fitting, 5)]
    return [f"{caption[0].upper()}{caption[1:]}." for caption in captions]


def _caption(template: str, scene: list[dict], background: dict, rng: random.Random, image_size: int) -> str:
    """One caption, lower-case and unpunctuated at its ends, naming every group of the scene with its count.

    Sizes are named in about half of the captions, and the groups come in a random order except that three
    captions in four name the most numerous group first, as people tend to: the references should not agree on
    one phrasing (CIDEr-D rewards what they share), but in a uniformly random order the first count word would be
    any group's count, and a decoder hedging between them writes a count that no group has.
    """
    groups = groups_of(scene)
    groups = rng.sample(groups, len(groups))
    # drawn from a stream of its own, so that version 2 keeps version 1's scenes and the same test split
    if random.Random(f"{background['seed']}:{template}").random() < LARGEST_FIRST:
        groups.sort(key=lambda group: -group["count"])  # stable: groups of equal count keep their random order
    with_size = rng.random() < 0.5

    def listing(named: list[dict], one: str = "a") -> str:
        return _listing([group_phrase(group, with_size, one) for group in named], rng)

    if template == "there":
        verb = "there's" if groups[0]["count"] == 1 else "there are"
        return f"{verb} {listing(groups)}"
    if template == "background":
        texture = rng.choice(BACKGROUNDS[background["kind"]])
        if rng.random() < 0.5:
            return f"{listing(groups)} on a {texture} background"
        return f"a {texture} background with {listing(groups)}"
    if template == "total":
        return f"{NUMBER_WORDS[len(scene)]} shapes: {listing(groups, one='one')}"
    if template == "seeing":
        return f"{rng.choice(SEEING)} {listing(groups)}"
    if template == "picture":
        return f"{rng.choice(PICTURE)} {listing(groups)}"
    if template == "place":  # a shape alone of its kind is placed; the others are listed after it
        first = next(group for group in groups if group["count"] == 1)
        others = [group for group in groups if group is not first]
        return f"{group_phrase(first, with_size)} {_place(first['shapes'][0], image_size)}, with {listing(others)}"
    if template == "pair":  # two shapes, along the axis on which they are further apart
        a, b = scene
        apart = "side-by-side" if abs(a["x"] - b["x"]) >= abs(a["y"] - b["y"]) else "one above the other"
        return f"{listing(groups)}, {apart}"
    return listing(groups)


# ------------------------------------------------------------------------------------------------------ checking
def named_shapes(caption: str) -> Counter:
    """The (colour, kind) multiset a caption names: "two green triangles" counts (green, triangle) twice.

    A count word ("a", "one" .. "six", 1 when there is none) and a colour word hold, across size words, until
    the next kind word (singular or plural); any other word drops them. Works on raw captions and on lower-cased
    tokenized ones alike ("there 's", "top-left" or "top left").
    """
    pairs, count, colour = Counter(), None, None
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in NUMBERS:
            count, colour = NUMBERS[word], None
        elif word in COLOURS:
            colour = word
        elif word in KIND_OF_WORD:
            pairs[(colour, KIND_OF_WORD[word])] += count or 1
            count = colour = None
        elif word not in SIZES:
            count = colour = None
    return pairs


# a caption is right when the multiset of (colour, kind) that it names, counts included, equals the scene's
caption_matches_scene = partial(shapes.caption_matches_scene, read=named_shapes)
grounded_accuracy = partial(shapes.grounded_accuracy, read=named_shapes)
