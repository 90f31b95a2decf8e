"""The basic shapes captions in Chinese, written as Chinese speakers write them, and the readers that check them.

The scenes, pictures and random draws are the English setting's (shapes.py), so both languages hold the same images
with the same information in their captions: "一个红色的圆形在蓝色正方形的上方" for "a red circle above a blue
square", "画面左上角有一个绿色的小三角形" for "there is a small green triangle in the top left". The readers take a
caption as a model writes it (jieba words joined without spaces) and give the English names ("red", "circle"; "above",
"top left"), so `caption_matches_scene` and `claim_holds` check both languages.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from captioning.data.shapes import _place, _relation

VERSION = 1  # of the Chinese templates: a change to them must come with a new one, so existing data is rewritten
COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色"}
KINDS = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形"}
SIZES = {"small": "小", "large": "大"}
RELATIONS = {"above": "上方", "below": "下方", "to the left of": "左边", "to the right of": "右边"}
PLACES = {"top left": "左上角", "top middle": "正上方", "top right": "右上角",
          "middle left": "左侧", "centre": "中央", "middle right": "右侧",
          "bottom left": "左下角", "bottom middle": "正下方", "bottom right": "右下角"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- captions
def _noun(shape: dict, with_size: bool, one: bool = True, de: bool = True) -> str:
    """A shape as a noun: "一个红色的小圆形" (one, de), "一个红色小圆形" (one), "红色小圆形"; without size "一个红色的
    圆形", "一个红色圆形", "红色圆形".

    Chinese puts the measure word "一个" before a shape it introduces and leaves it out of one it refers to ("在蓝色
    正方形的上方"); 的 after the colour reads well alone and heavy in a list. The size comes next to the kind, so the
    longest caption has 17 jieba words, as the longest English one has 17 PTB words (`max_length` 20 keeps it whole).
    """
    colour, kind = COLOURS[shape["colour"]], KINDS[shape["kind"]]
    size = SIZES[shape["size"]] if with_size else ""
    if not one:
        return f"{colour}{size}{kind}"
    return f"一个{colour}的{size}{kind}" if de else f"一个{colour}{size}{kind}"


def describe_zh(scene: list[dict], rng: random.Random, image_size: int) -> list[str]:
    """Five different Chinese captions of a scene, from the English templates' information, shapes in random order.

    Draws from `rng` exactly as `shapes.describe` does, so a seed gives the same scenes and images in both languages.
    Templates 0, 2 and 4 give sizes; a lone shape is placed by its ninth of the image, two shapes by their relation
    ("A在B的上方", or "B的上方有A": the order is drawn per caption), three by the relation of two of them.
    """
    captions = []
    templates = list(range(5))
    rng.shuffle(templates)
    for template in templates:
        shapes = rng.sample(scene, len(scene))
        sized = template % 2 == 0
        full = [_noun(s, sized) for s in shapes]  # introduced: "一个红色的圆形"
        plain = [_noun(s, sized, de=False) for s in shapes]  # in a list: "一个红色圆形和一个蓝色菱形"
        bare = [_noun(s, sized, one=False) for s in shapes]  # referred to: "蓝色正方形的上方"
        if len(shapes) == 1:
            (a,), place = full, PLACES[_place(shapes[0], image_size)]
            options = [a, f"画面{place}有{a}", f"灰色背景的{place}有{a}", f"这张图的{place}是{a}",
                       f"{bare[0]}位于画面{place}。"]  # fmt: skip
        elif len(shapes) == 2:
            (a, _), (_, b), relation = full, bare, RELATIONS[_relation(*shapes)]
            options = [f"{a}在{b}的{relation}", f"灰色背景上有{plain[0]}和{plain[1]}",
                       f"图中有两个图形，{b}的{relation}是{a}", f"{b}的{relation}有{a}",
                       f"{bare[0]}位于{b}{relation}。"]  # fmt: skip
        else:
            (a, _, c), b, relation = full, bare[1], RELATIONS[_relation(*shapes[:2])]
            listed = f"{plain[0]}、{plain[1]}和{plain[2]}"
            counted = f"图中有三个图形：{plain[0]}在{b}的{relation}，还有{plain[2]}"  # plain: 17 words at most
            options = [listed, counted, f"{b}的{relation}是{a}，还有{c}",
                       f"{b}的{relation}有{a}，画面中还有{c}", f"灰色背景上有{listed}"]  # fmt: skip
        captions.append(options[template])
    return captions


# ----------------------------------------------------------------------------------------------------- readers
# Other words for the kinds, so that a model's "红色的圆" still names a red circle.
KIND_WORDS = {"circle": ("圆形", "圆"), "square": ("正方形", "方形", "方块"), "triangle": ("三角形", "三角"),
              "diamond": ("菱形",)}  # fmt: skip


def _lexicon() -> dict[str, tuple[str, object]]:
    """Each word the readers know, with what it is: ("colour", "red"), ("kind", "circle"), ("position", (relation,
    place)), ... Everything else (一个, 有, 是, punctuation) is skipped.

    A position word has a relation meaning after a shape ("B的左侧": to the left of B) and a place meaning elsewhere
    ("画面左侧": the middle left); corners and the centre have only the latter, the plain "上方" only the former
    ("画面上方" does not say which ninth).
    """
    words = {"的": ("de", None)}
    for colour, word in COLOURS.items():
        words[word] = words[word[0]] = ("colour", colour)  # "红色", "红"
    words |= {word: ("kind", kind) for kind, kinds in KIND_WORDS.items() for word in kinds}
    words |= {word: ("size", size) for size, word in SIZES.items()}
    words |= dict.fromkeys(("在", "位于", "处于"), ("at", None))
    words |= dict.fromkeys(("画面", "图片", "图像", "背景", "画布"), ("frame", None))
    words |= dict.fromkeys(("和", "与", "、", "以及"), ("and", None))
    words |= dict.fromkeys(("上方", "上面", "上边"), ("position", ("above", None)))
    words |= dict.fromkeys(("下方", "下面", "下边"), ("position", ("below", None)))
    words |= dict.fromkeys(("左边", "左侧", "左面", "左方"), ("position", ("to the left of", "middle left")))
    words |= dict.fromkeys(("右边", "右侧", "右面", "右方"), ("position", ("to the right of", "middle right")))
    words |= {"正上方": ("position", ("above", "top middle")), "正下方": ("position", ("below", "bottom middle"))}
    words |= dict.fromkeys(("上方正中", "上方中间"), ("position", (None, "top middle")))
    words |= dict.fromkeys(("下方正中", "下方中间"), ("position", (None, "bottom middle")))
    words |= dict.fromkeys(("中央", "正中央", "中间", "正中间", "正中", "中心"), ("position", (None, "centre")))
    for row, row_name in (("上", "top"), ("下", "bottom")):
        for column, column_name in (("左", "left"), ("右", "right")):
            place = ("position", (None, f"{row_name} {column_name}"))
            words[f"{column}{row}角"] = words[f"{column}{row}方"] = place  # "左上角", "左上方"
    return words


_WORDS = _lexicon()
_PATTERN = re.compile("|".join(map(re.escape, sorted(_WORDS, key=len, reverse=True))))  # longest first: "正上方"

Shape = tuple[str | None, str]  # (colour or None, kind), as a caption names it


def _items(caption: str) -> list[tuple[str, object]]:
    """The caption as ("shape", (colour, kind)), ("position", (relation, place)), ("at" | "frame" | "and", None)
    items: a colour goes with the next kind unless another item comes between (a size or 的 may)."""
    items, colour = [], None
    for match in _PATTERN.finditer(re.sub(r"\s+", "", caption)):
        kind, value = _WORDS[match.group()]
        if kind == "colour":
            colour = value
        elif kind == "kind":
            items.append(("shape", (colour, value)))
            colour = None
        elif kind not in ("size", "de"):
            items.append((kind, value))
            colour = None
    return items


def named_shapes_zh(caption: str) -> Counter:
    """The (colour, kind) pairs that a Chinese caption names, in English ("red", "circle"): each kind word with the
    colour word before it ("红色的圆形", "红色圆形", "红色小圆形"); spaces between words are allowed."""
    return Counter(value for kind, value in _items(caption) if kind == "shape")


def position_claims_zh(caption: str) -> list[tuple]:
    """The position claims of a Chinese caption, in order, as `shapes_positions.position_claims` gives them:
    ("relation", A, "above", B) for "A在B的上方", "A位于B上方", "B的上方是A" or "B的上方有A", and ("place", A,
    "top left") for "画面左上角有A", "A位于画面左上角" or "A在左上角"."""
    items, claims = _items(caption), []
    for i, (kind, value) in enumerate(items):
        if kind != "position":
            continue
        (relation, place), before = value, items[i - 1] if i else ("start", None)
        if before[0] == "shape":  # "B的上方": a relation to B
            at = i >= 2 and items[i - 2][0] == "at"  # "A在B的上方": A stands before 在; else "B的上方是A"
            subject = _shape(items, i - 3) if at else _next_shape(items, i + 1)
            if relation and subject:
                claims.append(("relation", subject, relation, before[1]))
            continue
        j = i - 1
        while j >= 0 and items[j][0] == "frame":  # "A位于画面左上角", "灰色背景的左上角有A"
            j -= 1
        subject = _shape(items, j - 1) if j >= 0 and items[j][0] == "at" else _next_shape(items, i + 1)
        if place and subject:
            claims.append(("place", subject, place))
    return claims


def _shape(items: list[tuple[str, object]], i: int) -> Shape | None:
    return items[i][1] if 0 <= i < len(items) and items[i][0] == "shape" else None


def _next_shape(items: list[tuple[str, object]], i: int) -> Shape | None:
    """The first shape from items[i] on, before another position or 在 begins a claim of its own."""
    for kind, value in items[i:]:
        if kind == "shape":
            return value
        if kind in ("position", "at"):
            return None
    return None
