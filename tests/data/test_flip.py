"""data.flip: a mirrored training image with "left" and "right" swapped in its captions is again a true pair."""

from __future__ import annotations

import torch

from captioning.data.datamodule import CaptionDataset
from captioning.data.sampler import ResumableSampler
from captioning.data.shapes import draw_scene
from captioning.data.shapes_positions import claim_holds, position_claims
from captioning.data.transforms import build_transform
from tests.conftest import TINY_MODEL, tiny_data


def mirrored(scene: list[dict], size: int) -> list[dict]:
    return [{**shape, "x": size - shape["x"]} for shape in scene]


def test_a_mirrored_image_with_swapped_captions_is_again_a_true_pair(shapes_root):
    data = tiny_data(shapes_root)
    data.prepare_data()
    records = data.load_records("train")
    dataset = CaptionDataset(records, build_transform(TINY_MODEL["encoder"], 64))
    checked = changed = 0
    for index, record in enumerate(records):
        item, flipped = dataset[index], dataset[index + len(records)]
        torch.testing.assert_close(flipped["image"], item["image"].flip(-1))
        # the mirrored scene, drawn afresh, is the mirrored picture (up to the rasteriser's rounding at edges)
        drawn = build_transform(TINY_MODEL["encoder"], 64)(draw_scene(mirrored(record.scene, 64), 64))
        assert (drawn - flipped["image"]).abs().mean() < 0.05
        for caption in flipped["captions"]:
            claims = position_claims(caption)
            checked += len(claims)
            assert all(claim_holds(c, mirrored(record.scene, 64), 64) for c in claims), caption
        changed += flipped["captions"] != item["captions"]
    assert checked > 30 and changed > 10


def test_the_sampler_mirrors_about_half_the_images_the_same_way_on_every_resume():
    dataset = list(range(100))
    first = list(ResumableSampler(dataset, seed=3, mirror=True))
    assert sorted(i % 100 for i in first) == dataset and 30 < sum(i >= 100 for i in first) < 70
    resumed = ResumableSampler(dataset, seed=3, mirror=True)
    resumed.load_state_dict({"epoch": 0, "seed": 3, "shuffle": True, "dataset_size": 100, "samples_seen": 40})
    assert list(resumed) == first[40:]
    resumed.set_epoch(1)
    assert list(resumed) != first


def test_flip_is_on_for_the_built_in_shapes_and_off_for_photos(shapes_root):
    assert tiny_data(shapes_root).flip
    assert not tiny_data(shapes_root, flip=False).flip
    assert not tiny_data(shapes_root, dataset="coco").flip
