"""Position words swapped word by word: the foils of the relation probe and the captions of mirrored images."""

from __future__ import annotations

import json

import pytest

from captioning.text.position_words import position_foil, swap_left_right, swap_positions
from tests.conftest import COCO_MINI, require


@pytest.mark.parametrize(
    ("caption", "foil"),
    [
        ("a small red circle above a blue square", "a small red circle below a blue square"),
        ("a green triangle to the left of a red diamond", "a green triangle to the right of a red diamond"),
        ("a blue square in the top left", "a blue square in the bottom right"),
        ("A cat on top of a car.", "A cat underneath a car."),
        ("Left of the bus, under a tree", "Right of the bus, over a tree"),
        ("A red circle in the top-left corner.", "A red circle in the bottom-right corner."),
        ("a square on the left-hand side", "a square on the right-hand side"),
    ],
)
def test_position_words_swap_for_their_opposites_at_the_word_level(caption, foil):
    assert swap_positions(caption) == foil
    assert swap_positions(foil) == caption  # reversible


@pytest.mark.parametrize(
    "caption",
    ["a bright kite", "a copyright notice", "a topless bus and an overturned boat", "two shapes, one above the other"],
)
def test_words_that_only_contain_a_position_word_and_symmetric_phrases_have_no_foil(caption):
    assert position_foil(caption) is None


def test_a_mirror_swaps_left_and_right_only():
    assert swap_left_right("a circle to the left of a square above a triangle in the top right") == (
        "a circle to the right of a square above a triangle in the top left"
    )


def test_every_swap_of_real_coco_captions_is_reversed_by_swapping_again():
    annotations = json.loads((require(COCO_MINI / "annotations" / "captions_val2017.json")).read_text())
    captions = [a["caption"] for a in annotations["annotations"]]
    foils = [c for c in captions if position_foil(c)]
    assert len(foils) > 20  # COCO captions say "on top of", "next to a left ...", "above"
    words = lambda caption: caption.split()  # noqa: E731 - "on top  of" comes back as "on top of"
    assert all(words(swap_positions(swap_positions(c))) == words(c) for c in captions)
    assert all(swap_left_right(swap_left_right(c)) == c for c in captions)
