"""The built-in shapes' checks of captions against the scenes they were drawn from, which the datamodule offers.

The basic level checks the shapes a caption names (`shapes.grounded_accuracy`, in English or Chinese) and where it
places them (`shapes_positions.position_scores`); the hard level checks names and counts (`shapes_hard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from captioning.data import shapes, shapes_hard
from captioning.data.coco import ImageRecord
from captioning.data.shapes_positions import position_scores


@dataclass(frozen=True)
class ShapesCaptionChecks:
    """The checks of one setting of the shapes data.

    Args:
        level: "basic" or "hard".
        language: the captions' language: "en", or "zh" at the basic level.
        image_size: side of the images in pixels, which sets where "in the top left" ends.
    """

    level: str
    language: str
    image_size: int

    def __call__(self, captions: dict, records: Sequence[ImageRecord]) -> dict[str, float]:
        """Scores {image_id: caption} against the scenes of a split's records: {"grounded_accuracy": ...}, and at
        the basic level also {"position_claims", "position_accuracy", "claims_right"}."""
        scenes = {record.image_id: record.scene for record in records}
        if self.level == "hard":
            return {"grounded_accuracy": shapes_hard.grounded_accuracy(captions, scenes)}
        # the basic level's captions place shapes too: "above", "in the top left" ("上方", "画面左上角")
        read = shapes.caption_reader(self.language)
        scores = {"grounded_accuracy": shapes.grounded_accuracy(captions, scenes, read=read)}
        scores.update(position_scores(captions, scenes, self.image_size, language=self.language))
        return scores
