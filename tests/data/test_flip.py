"""data.flip and data.vertical_flip: a mirrored training image with the position words of its captions swapped
("left" and "right"; "above" and "below", "top" and "bottom") is again a true pair."""

from __future__ import annotations

import pytest
import torch

from captioning.data.datamodule import HORIZONTAL, VERTICAL, CaptionDataset
from captioning.data.sampler import ResumableSampler
from captioning.data.shapes import draw_scene
from captioning.data.shapes_positions import claim_holds, position_claims
from captioning.data.transforms import build_transform
from tests.conftest import TINY_MODEL, tiny_data


def mirrored(scene: list[dict], size: int, view: int) -> list[dict]:
    """The scene mirrored as view `view` of CaptionDataset: bit 1 left to right, bit 2 top to bottom."""
    x = lambda s: size - s["x"] if view & HORIZONTAL else s["x"]  # noqa: E731
    y = lambda s: size - s["y"] if view & VERTICAL else s["y"]  # noqa: E731
    return [{**shape, "x": x(shape), "y": y(shape)} for shape in scene]


@pytest.mark.parametrize("view", [HORIZONTAL, VERTICAL, HORIZONTAL | VERTICAL])
def test_a_mirrored_image_with_swapped_captions_is_again_a_true_pair(shapes_root, view):
    data = tiny_data(shapes_root)
    data.prepare_data()
    records = data.load_records("train")
    dataset = CaptionDataset(records, build_transform(TINY_MODEL["encoder"], 64))
    dims = [d for d, bit in ((-1, HORIZONTAL), (-2, VERTICAL)) if view & bit]
    checked = changed = 0
    for index, record in enumerate(records):
        item, flipped = dataset[index], dataset[index + view * len(records)]
        torch.testing.assert_close(flipped["image"], item["image"].flip(dims))
        if view == HORIZONTAL:  # the mirrored scene, drawn afresh, is the mirrored picture (triangles point up)
            drawn = build_transform(TINY_MODEL["encoder"], 64)(draw_scene(mirrored(record.scene, 64, view), 64))
            assert (drawn - flipped["image"]).abs().mean() < 0.05
        for caption in flipped["captions"]:
            claims = position_claims(caption)
            checked += len(claims)
            assert all(claim_holds(c, mirrored(record.scene, 64, view), 64) for c in claims), caption
        changed += flipped["captions"] != item["captions"]
    assert checked > 30 and changed > 10


def test_the_sampler_draws_each_images_view_the_same_way_on_every_resume():
    dataset = list(range(100))
    first = list(ResumableSampler(dataset, seed=3, views=(0, 1, 2, 3)))
    assert sorted(i % 100 for i in first) == dataset
    assert all(10 < sum(i // 100 == view for i in first) < 40 for view in range(4))
    resumed = ResumableSampler(dataset, seed=3, views=(0, 1, 2, 3))
    resumed.load_state_dict({"epoch": 0, "seed": 3, "shuffle": True, "dataset_size": 100, "samples_seen": 40})
    assert list(resumed) == first[40:]
    resumed.set_epoch(1)
    assert list(resumed) != first


def test_left_right_flips_are_on_for_the_built_in_shapes_and_off_for_photos_and_vertical_ones_on_request(shapes_root):
    assert tiny_data(shapes_root).views == (0, 1)
    assert tiny_data(shapes_root, vertical_flip=True).views == (0, 1, 2, 3)
    assert tiny_data(shapes_root, flip=False, vertical_flip=True).views == (0, 2)
    assert tiny_data(shapes_root, dataset="coco").views == (0,)
    assert tiny_data(shapes_root, dataset="coco", flip=True).views == (0, 1)
