"""The shapes data's own checks of captions against their scenes, which the datamodule offers as `check_captions`."""

import random
from pathlib import Path

import pytest

from captioning.data import shapes, shapes_hard
from captioning.data.coco import ImageRecord
from captioning.data.shapes_checks import ShapesCaptionChecks

SIZE = 64


def records_and_captions(level: str, language: str = "en", count: int = 40) -> tuple[list[ImageRecord], dict]:
    """`count` seeded scenes drawn as the dataset draws them, each with its first reference caption."""
    rng, records = random.Random(0), []
    for image_id in range(count):
        if level == "hard":
            scene = shapes_hard.random_scene(rng, SIZE)
            captions = shapes_hard.describe(scene, shapes_hard.random_background(rng), rng, SIZE)
        else:
            scene = shapes.random_scene(rng, SIZE)
            captions = shapes.describe(scene, rng, SIZE, language)
        records.append(ImageRecord(image_id, Path(f"{image_id}.png"), captions, scene))
    return records, {record.image_id: record.captions[0] for record in records}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_basic_checks_score_names_and_places_in_the_captions_language(language):
    records, captions = records_and_captions("basic", language)
    scores = ShapesCaptionChecks("basic", language, SIZE)(captions, records)
    assert set(scores) == {"grounded_accuracy", "position_claims", "position_accuracy", "claims_right"}
    assert scores["grounded_accuracy"] == 1.0 and scores["position_accuracy"] == 1.0


def test_hard_checks_score_names_and_counts_only():
    records, captions = records_and_captions("hard")
    assert ShapesCaptionChecks("hard", "en", SIZE)(captions, records) == {"grounded_accuracy": 1.0}


def test_a_caption_of_another_scene_lowers_grounded_accuracy():
    records, captions = records_and_captions("basic")
    wrong = {image_id: "a picture of nothing" if image_id % 2 else caption for image_id, caption in captions.items()}
    assert ShapesCaptionChecks("basic", "en", SIZE)(wrong, records)["grounded_accuracy"] == 0.5
