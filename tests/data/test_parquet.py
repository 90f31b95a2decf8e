"""People's own images in Parquet files, as Hugging Face `datasets` writes them: HF's Image struct or raw bytes, splits
from Hub file names or drawn by fractions, images decoded from memory, and packed by `captioning prepare`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from captioning.data.coco import ImageRecord
from captioning.data.feature_cache import images_digest
from captioning.data.parquet import load_parquet_records
from captioning.data.streaming import PackRecord, decode_image
from captioning.data.transforms import load_image
from captioning.errors import UserError
from tests.conftest import TINY_MODEL

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF's `Image()` feature


def png_bytes(shade: int, size: tuple[int, int] = (12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 90, 180)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_structs(file: Path, rows: list[tuple[str | None, int, str | list[str]]], column: str = "text") -> None:
    """Rows of (image path, shade, captions) as HF writes an Image column: {"bytes", "path"} structs."""
    file.parent.mkdir(parents=True, exist_ok=True)
    images = [{"bytes": png_bytes(shade), "path": path} for path, shade, _ in rows]
    captions = [caption for _, _, caption in rows]
    pq.write_table(pa.table({"image": pa.array(images, IMAGE_STRUCT), column: captions}), file)


def test_hub_file_names_give_the_splits_and_struct_images_decode_from_memory(tmp_path):
    data = tmp_path / "data"
    write_structs(data / "train-00000-of-00002.parquet", [("cat.png", 10, "a cat"), ("dog.png", 20, "a dog")])
    write_structs(data / "train-00001-of-00002.parquet", [("cat.png", 10, "a cat again"), ("owl.png", 30, "an owl")])
    write_structs(data / "validation-00000-of-00001.parquet", [("fox.png", 40, ["a fox", "a red fox"])])
    write_structs(tmp_path / "test" / "0000.parquet", [(None, 50, "a bird")], column="caption")  # a split folder

    train = load_parquet_records(tmp_path, "train")
    # One row per caption, across shards: rows of the same image (same path and bytes) merge, in order.
    assert [(r.image_id, r.captions) for r in train] == [
        ("cat.png", ["a cat", "a cat again"]),
        ("dog.png", ["a dog"]),
        ("owl.png", ["an owl"]),
    ]
    assert train[0].path == (data / "train-00000-of-00002.parquet").absolute() and train[0].data == png_bytes(10)
    image = load_image(train[1].data, size=(12, 8))
    assert image.size == (12, 8) and image.getpixel((0, 0)) == (20, 90, 180)
    (val,) = load_parquet_records(tmp_path, "val")
    assert (val.image_id, val.captions) == ("fox.png", ["a fox", "a red fox"])
    (test,) = load_parquet_records(tmp_path, "test")
    assert test.image_id == "test/0000/0" and test.captions == ["a bird"]  # no path: the file and the row
    assert not (tmp_path / "splits.json").exists()


def test_raw_binary_rows_without_split_names_are_split_by_fractions_and_the_split_is_kept(tmp_path):
    file = tmp_path / "photos.parquet"
    images = [png_bytes(shade) for shade in range(10)]
    captions = [[f"photo {i}", f"picture {i}"] for i in range(10)]
    pq.write_table(pa.table({"png": pa.array(images, pa.binary()), "captions": captions}), file)

    drawn = {split: load_parquet_records(file, split, seed=1) for split in ("train", "val", "test")}
    assert [len(records) for records in drawn.values()] == [8, 1, 1]
    ids = sorted(r.image_id for records in drawn.values() for r in records)
    assert ids == sorted(f"photos/{row}" for row in range(10))  # "<file stem>/<row>": raw bytes have no path
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert sorted(saved["val"] + saved["test"] + saved["train"]) == ids
    (record,) = drawn["val"]
    assert record.captions == captions[int(record.image_id.split("/")[1])]
    assert load_image(record.data).getpixel((0, 0))[0] == int(record.image_id.split("/")[1])
    assert [r.image_id for r in load_parquet_records(tmp_path, "val", seed=2)] == [record.image_id]  # read, kept


def test_a_path_shared_by_different_images_falls_back_to_file_and_row_ids(tmp_path):
    rows = [("image.jpg", 1, "one"), ("image.jpg", 2, "two"), ("image.jpg", 2, "two again"), ("other.png", 3, "x")]
    write_structs(tmp_path / "train.parquet", rows)
    records = load_parquet_records(tmp_path, "train")
    assert [(r.image_id, r.captions) for r in records] == [
        ("train/0", ["one"]),
        ("train/1", ["two", "two again"]),
        ("other.png", ["x"]),
    ]


def test_a_struct_with_a_path_and_no_bytes_reads_the_file_beside_the_parquet_file(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes(70))
    images = pa.array([{"bytes": None, "path": "pics/a.png"}, {"bytes": None, "path": "pics/gone.png"}], IMAGE_STRUCT)
    pq.write_table(pa.table({"image": images, "text": ["here", "gone"]}), tmp_path / "train-00000-of-00001.parquet")
    with pytest.warns(UserWarning, match=r"1 of the 2 images named by .* are not in"):
        (record,) = load_parquet_records(tmp_path, "train")
    assert record.path == (tmp_path / "pics" / "a.png").absolute() and record.data is None


def test_a_bad_caption_column_or_value_is_a_one_line_error_naming_the_file(tmp_path):
    file = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": [png_bytes(1)], "text": [3]}), file)
    with pytest.raises(
        ValueError, match=r"train.parquet: column 'text' must hold strings or lists of strings, not int"
    ):
        load_parquet_records(file, "train")
    pq.write_table(pa.table({"image": [png_bytes(1)], "label": ["a"]}), file)
    with pytest.raises(
        ValueError, match=r"train.parquet: no caption column \(expected one of 'text', .*has image, lab"
    ):
        load_parquet_records(file, "train")
    pq.write_table(pa.table({"picture": [png_bytes(1)], "text": ["a"]}), file)
    with pytest.raises(ValueError, match=r"train.parquet: no image column \(expected one of 'image', 'img', 'jpg'"):
        load_parquet_records(file, "train")
    pq.write_table(pa.table({"image": [png_bytes(1), png_bytes(2)], "text": ["a", " "]}), file)
    with pytest.raises(ValueError, match=r"train.parquet row 1: field 'text' holds an empty caption"):
        load_parquet_records(file, "train")
    file.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"train.parquet: not a readable Parquet file"):
        load_parquet_records(file, "train")


def test_a_split_that_no_file_name_gives_or_no_file_at_all_is_a_clear_error(tmp_path):
    write_structs(tmp_path / "data" / "train-00000-of-00001.parquet", [("a.png", 1, "a")])
    with pytest.raises(
        ValueError, match=r"no Parquet file of split 'test' \(named test-\*, testing-\*\); found .*train"
    ):
        load_parquet_records(tmp_path / "data", "test")
    write_structs(tmp_path / "data" / "extra.parquet", [("b.png", 2, "b")])
    with pytest.warns(
        UserWarning, match=r"1 Parquet files under .*data name no split \(e.g. extra.parquet\); they are left"
    ):
        assert [r.image_id for r in load_parquet_records(tmp_path / "data", "train")] == ["a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .parquet file in .*empty"):
        load_parquet_records(tmp_path / "empty", "train")
    with pytest.raises(FileNotFoundError, match=r"Parquet file or folder not found: .*none"):
        load_parquet_records(tmp_path / "none", "train")


def test_without_pyarrow_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what `import` sees when pyarrow is not installed
    with pytest.raises(UserError, match=r'needs pyarrow: pip install -e "\.\[parquet\]"'):
        load_parquet_records(tmp_path, "train")


def test_unreadable_bytes_are_named_by_their_parquet_file_and_id_when_packed(tmp_path):
    good = ImageRecord("a.png", tmp_path / "x.parquet", ["a"], data=png_bytes(5, (40, 30)))
    sample = PackRecord(16)(good)
    assert decode_image(sample["image"]).size == (16, 16) and json.loads(sample["image_id"]) == "a.png"
    with pytest.warns(UserWarning, match=r"x.parquet \[bad.png\]: cannot read image"):
        assert PackRecord(16)(ImageRecord("bad.png", tmp_path / "x.parquet", ["b"], data=b"not an image")) is None
    with pytest.raises(OSError, match=r"an image of 3 bytes: cannot read image"):
        load_image(b"abc")


def test_feature_cache_key_follows_the_bytes_of_images_held_in_memory(tmp_path):
    record = ImageRecord("a.png", tmp_path / "x.parquet", ["a"], data=png_bytes(5))
    changed = ImageRecord("a.png", tmp_path / "x.parquet", ["a"], data=png_bytes(6))
    assert images_digest([record]) == images_digest([record]) != images_digest([changed])


def test_prepare_packs_a_parquet_split_from_the_images_in_memory(tmp_path):
    from captioning.data import prepare
    from captioning.data.streaming import load_packed_records

    rows = [(f"img{i}.png", 10 * i, [f"picture {i}", f"image {i}"]) for i in range(4)]
    write_structs(tmp_path / "data" / "validation-00000-of-00001.parquet", rows)
    out = tmp_path / "packed"
    args = ["--dataset", "parquet", "--root", str(tmp_path / "data"), "--split", "val", "--out", str(out)]
    assert prepare.main([*args, "--encoder", TINY_MODEL["encoder"], "--size", "16", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["source"]["dataset"] == "parquet"
    packed = load_packed_records(str(out))
    assert [(r.image_id, r.captions) for r in packed] == [(path, captions) for path, _, captions in rows]
