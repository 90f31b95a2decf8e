"""COCO and Karpathy annotation files, on the real mini COCO set, and their errors."""

from __future__ import annotations

import json
import shutil

import pytest

from captioning.data import load_coco_captions, load_karpathy_split
from tests.conftest import COCO_MINI, SHARED_DATA, require


def test_official_val2017_file_with_159_of_5000_images_present_warns_and_keeps_those():
    annotations = require(COCO_MINI / "annotations" / "captions_val2017.json")
    with pytest.warns(UserWarning, match=r"4841 of the 5000 images named by .* are not in .*val2017"):
        records = load_coco_captions(annotations, COCO_MINI / "val2017")
    assert len(records) == 159
    assert all(record.path.is_file() and len(record.captions) >= 5 for record in records)
    assert records[0].image_id == 139 and records[0].captions[0].startswith("A woman stands")


def test_karpathy_file_selects_its_split_and_builds_coco_paths():
    karpathy = require(SHARED_DATA / "karpathy-format" / "dataset_coco_sample159_karpathy_format.json")
    records = load_karpathy_split(karpathy, COCO_MINI, "test")
    assert len(records) == 159 and all(record.path.is_file() for record in records)
    assert {r.image_id for r in records} == {r.image_id for r in load_coco_captions(
        COCO_MINI / "annotations" / "captions_val2017_subset159.json", COCO_MINI / "val2017")}  # fmt: skip
    with pytest.raises(ValueError, match="no image has split 'val'"):
        load_karpathy_split(karpathy, COCO_MINI, "val")


def test_karpathy_restval_joins_train_and_flickr_layout_has_no_filepath(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    images = [
        {"filename": "a.jpg", "imgid": 0, "split": "train", "sentences": [{"raw": "a dog"}]},
        {"filename": "b.jpg", "imgid": 1, "split": "restval", "sentences": [{"raw": "a cat"}]},
    ]
    karpathy = tmp_path / "dataset_flickr8k.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    assert [r.image_id for r in load_karpathy_split(karpathy, tmp_path, "train")] == [0, 1]
    assert [r.image_id for r in load_karpathy_split(karpathy, tmp_path, "train", restval_to_train=False)] == [0]


def test_no_image_present_is_an_error_naming_the_folder(tmp_path):
    annotations = require(COCO_MINI / "annotations" / "captions_val2017_subset159.json")
    with pytest.raises(FileNotFoundError, match=f"none of the 159 images .* is in {tmp_path}"):
        load_coco_captions(annotations, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid JSON file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": []}', "the file has no field 'annotations'"),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\] has no field 'file_name'"),
        ('{"images": [], "annotations": [{"image_id": 1}]}', r"annotations\[0\] has no field 'caption'"),
    ],
)
def test_malformed_annotation_file_errors_name_file_and_field(tmp_path, content, message):
    path = tmp_path / "captions.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_coco_captions(path, tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"annotation file not found: {tmp_path / 'nope.json'}"):
        load_coco_captions(tmp_path / "nope.json", tmp_path)


def test_unreadable_image_is_skipped_and_counted(shapes_root, tmp_path):
    from captioning.data.datamodule import CaptionDataset, TrainCollate
    from captioning.data.transforms import build_transform
    from captioning.text import CaptionTokenizer

    records = load_coco_captions(shapes_root / "annotations" / "captions_val.json", shapes_root / "val")[:4]
    broken = tmp_path / "broken.png"
    shutil.copy(records[1].path, broken)
    broken.write_bytes(broken.read_bytes()[:60])  # truncated PNG
    records[1].path = broken
    dataset = CaptionDataset(records, build_transform("test_convnext", 64))
    tokenizer = CaptionTokenizer.train((c for r in records for c in r.captions), min_frequency=1)
    with pytest.warns(UserWarning, match="skipping unreadable image: .*broken.png"):
        batch = TrainCollate(tokenizer, captions_per_image=5, max_length=20)([dataset[i] for i in range(4)])
    assert batch["skipped"] == 1 and batch["images"].shape == (3, 3, 64, 64)
    assert batch["inputs"].shape[0] == 3 and batch["image_ids"] == [records[i].image_id for i in (0, 2, 3)]
