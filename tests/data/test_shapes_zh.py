"""The shapes data in Chinese: captions that say what the English ones say, readers that check a model's raw Chinese
captions against the scene, and position swaps that keep mirrored pairs true."""

from __future__ import annotations

import json
import random

import pytest

from captioning.data.shapes import (
    annotation_path,
    caption_matches_scene,
    caption_reader,
    describe,
    ensure_shapes,
    grounded_accuracy,
    random_scene,
)
from captioning.data.shapes_positions import claim_holds, position_claims, position_scores
from captioning.data.shapes_zh import named_shapes_zh, position_claims_zh
from captioning.metrics.words import join_words, split_lines
from captioning.text.position_words import ZH_POSITION_PHRASES, swap_left_right, swap_positions, swap_up_down

SIZE = 128
SPLITS = {"train": 12, "val": 6, "test": 6}


def examples(language: str, count: int = 300, seed: int = 1) -> list[tuple[list[dict], list[str]]]:
    """`count` seeded scenes with their five captions in `language`, drawn as the dataset draws them."""
    rng, pairs = random.Random(seed), []
    for _ in range(count):
        scene = random_scene(rng, SIZE)
        pairs.append((scene, describe(scene, rng, SIZE, language)))
    return pairs


def true_pair(caption: str, scene: list[dict], language: str = "zh") -> bool:
    """The caption names every shape of the scene and its every position claim holds."""
    claims = position_claims_zh(caption) if language == "zh" else position_claims(caption)
    return caption_matches_scene(caption, scene, caption_reader(language)) and all(
        claim_holds(claim, scene, SIZE) for claim in claims
    )


def mirrored(scene: list[dict], axis: str) -> list[dict]:
    """The scene flipped left to right (axis "x") or top to bottom ("y")."""
    return [{**shape, axis: SIZE - shape[axis]} for shape in scene]


# -------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_generated_caption_names_its_shapes_and_every_claim_holds(language):
    pairs = examples(language)
    assert all(len(set(captions)) == 5 for _, captions in pairs)
    assert all(true_pair(caption, scene, language) for scene, captions in pairs for caption in captions)
    read = position_claims_zh if language == "zh" else position_claims
    placed = sum(bool(read(caption)) for _, captions in pairs for caption in captions) / (5 * len(pairs))
    assert 0.7 < placed < 0.8  # most captions place their shapes, in both languages alike


def test_chinese_captions_say_what_the_english_ones_say_of_the_same_scenes():
    """The same seed draws the same scenes, and each Chinese caption names and places what its English twin does."""
    for (scene, english), (scene_zh, chinese) in zip(examples("en"), examples("zh"), strict=True):
        assert scene_zh == scene
        for en, zh in zip(english, chinese, strict=True):
            assert named_shapes_zh(zh) == caption_reader("en")(en)
            assert position_claims_zh(zh) == position_claims(en), (en, zh)


def test_chinese_captions_are_written_without_spaces_as_short_as_the_english_in_a_small_vocabulary():
    captions = [caption for _, captions in examples("zh") for caption in captions]
    assert not any(" " in caption or caption.isascii() for caption in captions)
    assert 0.1 < sum(caption.endswith("。") for caption in captions) / len(captions) < 0.5
    lines = [line.split() for line in split_lines(captions, "zh")]
    assert max(map(len, lines)) == 17  # as the English captions' longest: configs/shapes_zh.yaml keeps 19 + EOS
    words = {word for line in lines for word in line}
    assert {"左上角", "正上方", "中央", "右侧", "上方", "左边", "红色", "正方形", "小"} <= words
    assert len(words) < 50  # as few as the English captions' 36: learnable by a small model


# ------------------------------------------------------------------------------------------------------ readers
def model_writes(caption: str) -> str:
    """The caption as a model trained on it writes it: its jieba words joined, punctuation gone."""
    return join_words(split_lines([caption], "zh")[0].split(), "zh")


RED_ABOVE_BLUE = ("relation", ("red", "circle"), "above", ("blue", "square"))


@pytest.mark.parametrize(
    ("caption", "claims"),
    [
        ("一个红色的圆形在蓝色正方形的上方", [RED_ABOVE_BLUE]),
        ("红色圆形位于蓝色正方形上方。", [RED_ABOVE_BLUE]),
        ("蓝色正方形的上方是一个红色的圆形", [RED_ABOVE_BLUE]),
        ("蓝色 正方形 上方 有 一个 红色 圆形", [RED_ABOVE_BLUE]),  # spaces between words, no 的
        ("一个小的红色圆形在蓝色的大正方形的上面", [RED_ABOVE_BLUE]),
        ("画面左上角有一个小的绿色三角形", [("place", ("green", "triangle"), "top left")]),
        ("一个绿色的三角形位于画面的左上角", [("place", ("green", "triangle"), "top left")]),
        ("灰色背景的左侧有一个黄色菱形", [("place", ("yellow", "diamond"), "middle left")]),
        ("这张图的正上方是一个紫色的圆形", [("place", ("purple", "circle"), "top middle")]),
        ("紫色圆形在中央", [("place", ("purple", "circle"), "centre")]),
        (
            model_writes("图中有三个图形：一个红色的圆形在蓝色正方形的左边，还有一个黄色的菱形"),
            [("relation", ("red", "circle"), "to the left of", ("blue", "square"))],
        ),
        ("灰色背景上有一个红色圆形和一个蓝色菱形", []),
        ("画面上方有一个红色圆形", []),  # which ninth is not said
        ("一个红色的圆形在蓝色正方形的左上方", []),  # a diagonal: no axis
    ],
)
def test_claims_are_read_from_chinese_as_written_or_as_a_model_writes_it(caption, claims):
    assert position_claims_zh(caption) == claims


def test_names_are_read_with_or_without_de_and_with_spaces():
    expected = {("red", "circle"): 1, ("blue", "square"): 1}
    for caption in ("一个红色的圆形和一个蓝色的正方形", "红色圆形和蓝色正方形", "红色 的 小 圆形 与 蓝色 大 正方形"):
        assert named_shapes_zh(caption) == expected
    assert named_shapes_zh("一个圆形在红色正方形的上方") == {(None, "circle"): 1, ("red", "square"): 1}


SCENE = [
    {"kind": "circle", "colour": "red", "size": "small", "x": 30.0, "y": 20.0, "half": 14.1},
    {"kind": "square", "colour": "blue", "size": "large", "x": 40.0, "y": 100.0, "half": 25.6},
]


@pytest.mark.parametrize(
    "caption",
    [
        "一个红色的圆形在蓝色正方形的上方",
        "蓝色正方形的上方有一个红色的圆形",
        "画面左上角有一个红色的圆形和一个蓝色的正方形",
    ],
)
def test_true_chinese_captions_hold(caption):
    assert true_pair(caption, SCENE)


@pytest.mark.parametrize(
    "caption",
    [
        "一个绿色的圆形在蓝色正方形的上方",  # wrong colour
        "一个红色的三角形在蓝色正方形的上方",  # wrong kind
        "一个红色的圆形在蓝色正方形的下方",  # swapped relation
        "蓝色正方形的左边是一个红色的圆形",  # wrong axis
        "红色圆形位于蓝色正方形下方。",
        "画面右上角有一个红色的圆形和一个蓝色的正方形",  # wrong place
        "画面左上角有一个红色的圆形",  # a shape left out
        "一个红色的圆形、一个蓝色的正方形和一个黄色的菱形",  # one too many
    ],
)
def test_wrong_chinese_captions_fail(caption):
    assert not true_pair(caption, SCENE)


# ------------------------------------------------------------------------------------------ written data, scores
def test_language_is_kept_in_the_generator_settings_and_a_switch_rewrites_the_same_images(tmp_path):
    ensure_shapes(tmp_path, image_size=64, split_sizes=SPLITS)
    english, image = annotation_path(tmp_path, "val").read_text(), (tmp_path / "val" / "000002.png").read_bytes()
    assert json.loads(english)["info"]["generator"] == {"version": 2, "image_size": 64, "count": 6, "seed": 1}

    ensure_shapes(tmp_path, image_size=64, split_sizes=SPLITS, language="zh")
    data = json.loads(annotation_path(tmp_path, "val").read_text())
    assert data["info"]["generator"] == {
        "version": 2, "language": "zh", "language_version": 1, "image_size": 64, "count": 6, "seed": 1
    }  # fmt: skip
    assert (tmp_path / "val" / "000002.png").read_bytes() == image
    assert all(not a["caption"].isascii() for a in data["annotations"])

    ensure_shapes(tmp_path, image_size=64, split_sizes=SPLITS)
    assert annotation_path(tmp_path, "val").read_text() == english
    with pytest.raises(ValueError, match="'fr'.*en, zh"):
        ensure_shapes(tmp_path, image_size=64, split_sizes=SPLITS, language="fr")


def test_scores_read_chinese_captions_and_catch_swapped_positions():
    pairs = examples("zh", count=200, seed=3)
    scenes = {i: scene for i, (scene, _) in enumerate(pairs)}
    rng = random.Random(0)
    captions = {i: rng.choice([c for c in captions if position_claims_zh(c)]) for i, (_, captions) in enumerate(pairs)}
    assert grounded_accuracy(captions, scenes, read=caption_reader("zh")) == 1.0
    assert grounded_accuracy(captions, scenes) == 0.0  # the English reader finds no shape in Chinese
    scores = position_scores(captions, scenes, SIZE, language="zh")
    assert scores == {"position_claims": 1.0, "position_accuracy": 1.0, "claims_right": 1.0}
    foils = {i: swap_positions(caption) for i, caption in captions.items()}
    foils = {i: foil for i, foil in foils.items() if foil != captions[i]}  # "画面中央" has no opposite
    assert len(foils) > 150
    assert position_scores(foils, scenes, SIZE, language="zh")["position_accuracy"] < 0.2


# ------------------------------------------------------------------------------------------------------- mirrors
@pytest.mark.parametrize(("axis", "swap"), [("x", swap_left_right), ("y", swap_up_down)])
def test_a_mirrored_scene_with_its_captions_swapped_is_again_a_true_pair(axis, swap):
    changed = 0
    for scene, captions in examples("zh"):
        for caption in captions:
            assert true_pair(swap(caption), mirrored(scene, axis)), (caption, swap(caption))
            changed += swap(caption) != caption
    assert changed > 400  # the left-right or up-down claims, not a vacuous pass


def test_chinese_swaps_are_reversible_and_leave_other_words_alone():
    phrases = set(ZH_POSITION_PHRASES)
    for swap in (swap_left_right, swap_up_down, swap_positions):
        assert {swap(phrase) for phrase in phrases} == phrases  # each phrase's opposite is a phrase too
        for _, captions in examples("zh", count=100):
            assert all(swap(swap(caption)) == caption for caption in captions)
    assert swap_positions("画面左上角有一个圆形，桌子上有一本书") == "画面右下角有一个圆形，桌子上有一本书"
    assert swap_positions("上下排列的十个左右的圆形") == "上下排列的十个左右的圆形"  # "one above the other", "about"
    assert swap_left_right("a circle left of 红色圆形的左边") == "a circle right of 红色圆形的右边"
