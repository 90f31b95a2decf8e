"""People's own images in the Hugging Face ImageFolder layout: metadata.jsonl or .csv, split subfolders or one folder
split by fractions (kept in splits.json), and one-line errors for bad rows."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from captioning.data import splits
from captioning.data.folder import load_folder_records


def png(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 100, 200)).save(path)


def jsonl(folder: Path, rows: list[dict], images: bool = True) -> Path:
    """Writes `metadata.jsonl` (and, by default, a PNG for each file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if images and not (folder / row["file_name"]).exists():
            png(folder / row["file_name"], i)
    file = folder / "metadata.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return file


def one_folder(root: Path, count: int) -> Path:
    return jsonl(root, [{"file_name": f"img{i}.png", "text": f"picture {i}"} for i in range(count)])


def test_split_subfolders_each_have_their_metadata_with_nested_names_and_list_captions(tmp_path):
    jsonl(
        tmp_path / "train",
        [{"file_name": "a/b/x.png", "captions": ["one", "two"]}, {"file_name": "y.png", "text": "3"}],
    )
    png(tmp_path / "validation" / "v.png")
    with (tmp_path / "validation" / "metadata.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["file_name", "caption"], ["v.png", '["a red square", "a square"]']])
    jsonl(tmp_path / "test", [{"file_name": "./t.png", "caption": "a test"}])

    train = load_folder_records(tmp_path, "train")
    assert [(r.image_id, r.captions) for r in train] == [("a/b/x.png", ["one", "two"]), ("y.png", ["3"])]
    assert train[0].path == (tmp_path / "train" / "a" / "b" / "x.png").absolute() and train[0].path.is_absolute()
    (val,) = load_folder_records(tmp_path, "val")  # from validation/, a csv cell holding a JSON list
    assert (val.image_id, val.captions) == ("v.png", ["a red square", "a square"])
    (test,) = load_folder_records(tmp_path, "test")
    assert test.image_id == "t.png" and test.path.is_file()
    assert not (tmp_path / "splits.json").exists()  # the folders are the split


def test_rows_of_one_file_name_merge_their_captions_in_order_in_jsonl_and_csv(tmp_path):
    rows = [{"file_name": "b.png", "text": "b one"}, {"file_name": "a.png", "text": "a one"}]
    rows += [{"file_name": "b.png", "text": ["b two", "b three"]}]
    jsonl(tmp_path / "train", rows)
    png(tmp_path / "val" / "c.png")
    with (tmp_path / "val" / "metadata.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerows([["file_name", "text", "source"], ["c.png", "c, one", "x"], ["c.png", "c\ntwo", "y"]])

    records = load_folder_records(tmp_path, "train")
    assert [(r.image_id, r.captions) for r in records] == [
        ("b.png", ["b one", "b two", "b three"]),
        ("a.png", ["a one"]),
    ]
    (record,) = load_folder_records(tmp_path, "val")  # from val/; a quoted cell may hold a comma or a line break
    assert record.captions == ["c, one", "c\ntwo"]


def test_one_folder_is_split_by_fractions_once_and_the_written_split_is_reused(tmp_path):
    metadata = one_folder(tmp_path, 20)
    drawn = {split: [r.image_id for r in load_folder_records(tmp_path, split, seed=3)] for split in splits.SPLITS}
    assert [len(drawn[split]) for split in splits.SPLITS] == [16, 2, 2]
    assert sorted(sum(drawn.values(), [])) == sorted(f"img{i}.png" for i in range(20))  # each image in one split
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["seed"] == 3 and saved["fractions"] == splits.DEFAULT_FRACTIONS
    assert {split: sorted(saved[split]) for split in splits.SPLITS} == {s: sorted(drawn[s]) for s in splits.SPLITS}
    assert not list(tmp_path.glob(".splits.json*"))  # written atomically: no temporary file left

    # Read, not drawn again: another seed and other fractions change nothing (with a warning), nor does an edit.
    with pytest.warns(UserWarning, match=r"splits.json was drawn with .* kept \(delete it to split again"):
        again = load_folder_records(tmp_path, "val", {"train": 0.5, "val": 0.5}, seed=4)
    assert [r.image_id for r in again] == drawn["val"]
    saved["val"].append(saved["train"].pop())
    (tmp_path / "splits.json").write_text(json.dumps(saved))
    assert len(load_folder_records(tmp_path, "val", seed=3)) == 3

    # Images added after the split are left out with one warning that says how to split again.
    metadata.write_text(metadata.read_text() + json.dumps({"file_name": "img0.png", "text": "more"}) + "\n")
    for name in ("new1.png", "new2.png"):
        png(tmp_path / name)
        metadata.write_text(metadata.read_text() + json.dumps({"file_name": name, "text": "new"}) + "\n")
    with pytest.warns(UserWarning, match=r"2 of the 22 images .* not in .*splits.json .* delete .*splits.json"):
        train = load_folder_records(tmp_path, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the other splits do not repeat it
        load_folder_records(tmp_path, "test")
    assert "new1.png" not in {r.image_id for r in train}


def test_the_same_seed_draws_the_same_split_in_another_folder(tmp_path):
    one_folder(tmp_path / "a", 30)
    one_folder(tmp_path / "b", 30)
    a, b = ([r.image_id for r in load_folder_records(tmp_path / n, "test", seed=7)] for n in "ab")
    assert a == b
    one_folder(tmp_path / "c", 30)
    assert [r.image_id for r in load_folder_records(tmp_path / "c", "test", seed=8)] != a  # another seed, another draw


def test_three_images_give_every_split_one_and_an_empty_split_is_a_clear_error(tmp_path):
    one_folder(tmp_path / "three", 3)
    assert [len(load_folder_records(tmp_path / "three", split)) for split in splits.SPLITS] == [1, 1, 1]
    one_folder(tmp_path / "two", 2)
    assert len(load_folder_records(tmp_path / "two", "train", {"train": 1.0})) == 2
    with pytest.raises(ValueError, match=r"metadata.jsonl: split 'val' has no images \(2 split as train 2, val 0"):
        load_folder_records(tmp_path / "two", "val")


def test_a_folder_that_cannot_be_written_warns_once_and_uses_the_drawn_split(tmp_path, monkeypatch):
    one_folder(tmp_path, 10)

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(splits, "write_json", refuse)
    with pytest.warns(
        UserWarning, match=r"cannot write .*splits.json \(Permission denied\); using the split drawn now"
    ):
        train = load_folder_records(tmp_path, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        val, test = load_folder_records(tmp_path, "val"), load_folder_records(tmp_path, "test")
    assert len(train) == 8 and len({r.image_id for r in train + val + test}) == 10
    assert not (tmp_path / "splits.json").exists()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"file_name": "a.png", "text": "ok"}', '{"file_name": "b.png", "label": 3}'],
         r"metadata.jsonl line 2: no caption field \(expected one of 'text', 'caption', 'captions'\)"),
        (['{"file_name": "a.png", "text": "ok"}', "", '{"file_name": "b.png", "text": "x"'],
         r"metadata.jsonl line 3: not valid JSON \("),
        (['{"file_name": "a.png", "text": 7}'], r"line 1: field 'text' must be a string or a list of strings"),
        (['{"file_name": "a.png", "captions": ["ok", 2]}'], r"line 1: field 'captions' must be a string or a list"),
        (['{"file_name": "a.png", "caption": "  "}'], r"line 1: field 'caption' holds an empty caption"),
        (['{"file_name": "a.png", "captions": []}'], r"line 1: field 'captions' holds an empty caption"),
        (['{"text": "no file"}'], r"line 1: no field 'file_name'"),
        (['{"file_name": "../a.png", "text": "x"}'], r"line 1: field 'file_name' must be a path inside"),
        (['["a.png", "x"]'], r"line 1: expected a JSON object, found list"),
    ],
)  # fmt: skip
def test_a_bad_jsonl_row_is_a_one_line_error_naming_file_line_and_field(tmp_path, lines, message):
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as error:
        load_folder_records(tmp_path, "train")
    assert str(tmp_path / "metadata.jsonl") in str(error.value) and "\n" not in str(error.value)


def test_a_bad_csv_row_names_its_line_and_field(tmp_path):
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,a cat\nb.png,""\n')
    with pytest.raises(ValueError, match=r"metadata.csv line 3: field 'text' holds an empty caption"):
        load_folder_records(tmp_path, "train")
    (tmp_path / "metadata.csv").write_text("name,text\na.png,a cat\n")
    with pytest.raises(ValueError, match=r"metadata.csv line 2: no field 'file_name'"):
        load_folder_records(tmp_path, "train")


def test_no_metadata_file_names_the_folder_and_both_file_names(tmp_path):
    png(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match=rf"no metadata file in {tmp_path} \(expected metadata.jsonl or .*csv"):
        load_folder_records(tmp_path, "train")
    jsonl(tmp_path / "train", [{"file_name": "a.png", "text": "a"}])
    with pytest.raises(FileNotFoundError, match=r"no folder of split 'val' \(expected validation/ or val/"):
        load_folder_records(tmp_path, "val")
    (tmp_path / "train" / "metadata.csv").write_text("file_name,text\na.png,a\n")
    with pytest.raises(ValueError, match=r"train: both metadata.jsonl and metadata.csv are there; keep one"):
        load_folder_records(tmp_path, "train")


def test_missing_images_are_counted_and_warned_and_none_present_is_an_error(tmp_path):
    rows = [{"file_name": f"img{i}.png", "text": "x"} for i in range(4)]
    jsonl(tmp_path / "train", rows)
    (tmp_path / "train" / "img1.png").unlink()
    (tmp_path / "train" / "img2.png").unlink()
    with pytest.warns(UserWarning, match=r"2 of the 4 images named by .*metadata.jsonl are not in .*train"):
        records = load_folder_records(tmp_path, "train")
    assert [r.image_id for r in records] == ["img0.png", "img3.png"]
    jsonl(tmp_path / "test", rows, images=False)
    with pytest.raises(FileNotFoundError, match=r"none of the 4 images named by .*metadata.jsonl is in .*test"):
        load_folder_records(tmp_path, "test")


def test_splits_are_drawn_from_the_images_that_are_there(tmp_path):
    """Rows whose files are missing take no place in a split: each split of 10 images present gets its share, where
    missing files drawn into a small split used to leave it empty (and the error then blamed the folder)."""
    jsonl(tmp_path, [{"file_name": f"img{i}.png", "text": f"picture {i}"} for i in range(10)])
    rows = [{"file_name": f"img{i}.png", "text": f"picture {i}"} for i in range(10)]
    rows += [{"file_name": f"gone{i}.png", "text": "lost"} for i in range(30)]
    jsonl(tmp_path, rows, images=False)
    with pytest.warns(UserWarning, match=r"30 of the 40 images named by .*metadata.jsonl are not in"):
        sizes = {split: len(load_folder_records(tmp_path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 8, "val": 1, "test": 1}
    drawn = json.loads((tmp_path / "splits.json").read_text())
    assert not any(name.startswith("gone") for split in ("train", "val", "test") for name in drawn[split])
