"""Position words checked against the scene: the references are all right, and swapped relations are caught."""

from __future__ import annotations

import random

from captioning.data.coco import load_coco_captions
from captioning.data.shapes import annotation_path
from captioning.data.shapes_positions import position_claims, position_scores

SWAP = {"above": "below", "below": "above", "left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def test_claims_are_read_with_the_shapes_they_relate():
    assert position_claims("a small red circle above a blue square") == [
        ("relation", ("red", "circle"), "above", ("blue", "square"))
    ]
    assert position_claims("a green triangle in the top left") == [("place", ("green", "triangle"), "top left")]
    assert position_claims("there is a red circle to the right of a square and a blue diamond") == [
        ("relation", ("red", "circle"), "to the right of", (None, "square"))
    ]
    assert position_claims("a red circle next to a blue square") == []  # no direction, no claim


def test_every_reference_caption_places_its_shapes_right_and_swapped_words_are_caught(shapes_root):
    records = load_coco_captions(annotation_path(shapes_root, "test"), shapes_root / "test")
    scenes = {r.image_id: r.scene for r in records}
    rng = random.Random(0)
    references = {r.image_id: rng.choice(r.captions) for r in records}
    claims = {i: c for i, c in references.items() if position_claims(c)}
    scores = position_scores(claims, scenes, image_size=64)
    assert len(claims) >= 3 and scores == {"position_claims": 1.0, "position_accuracy": 1.0, "claims_right": 1.0}
    swapped = {i: " ".join(SWAP.get(w, w) for w in c.split()) for i, c in claims.items()}
    assert position_scores(swapped, scenes, image_size=64)["position_accuracy"] < 0.5
    plain = {i: c for i, c in references.items() if not position_claims(c)}
    assert position_scores(plain, scenes, image_size=64)["position_claims"] == 0.0
