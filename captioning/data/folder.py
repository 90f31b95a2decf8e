"""A folder of people's own images with captions, in the Hugging Face `datasets` ImageFolder layout.

Images (at any depth) beside a `metadata.jsonl` or `metadata.csv` whose rows name an image (`file_name`, relative to
the metadata file's folder) and its captions (`text`, `caption` or `captions`: a string, a list of strings, or one
row per caption). Splits are subfolders (`train/`, `validation/` or `val/`, `test/`, each with its own metadata), or,
when the metadata is at the top, drawn by fractions and kept in `splits.json` (see `splits.py`).
See https://huggingface.co/docs/datasets/image_dataset#imagefolder.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from captioning.data.coco import ImageRecord, report_missing
from captioning.data.splits import check_split, split_keys
from captioning.errors import UserError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_FIELDS = ("text", "caption", "captions")  # the first one a row has holds its captions
SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def load_folder_records(
    root: str | Path, split: str, split_fractions: dict[str, float] | None = None, seed: int = 0
) -> list[ImageRecord]:
    """The images of one split that exist, each with all of its captions, in the metadata's order.

    Args:
        root: the dataset folder: with a metadata file at the top (split here by fractions), or with split subfolders.
        split: "train", "val" or "test".
        split_fractions: the share of each split when they are drawn (default 80/10/10); `splits.json`, once written,
            is kept and wins.
        seed: the seed of the shuffle that draws the splits.

    Returns:
        Records whose `image_id` is the row's `file_name` and `path` the absolute image file.
    """
    check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    split_folders = [root / name for names in SPLIT_FOLDERS.values() for name in names if (root / name).is_dir()]
    drawn = not split_folders or any((root / name).is_file() for name in METADATA_FILES)
    metadata = find_metadata(root if drawn else split_folder(root, split))
    folder, images = metadata.parent.absolute(), read_metadata(metadata)
    present = {name: captions for name, captions in images.items() if (folder / name).is_file()}
    report_missing(len(images) - len(present), len(present), folder, metadata)
    if drawn:  # the splits are drawn from the images that are there, so that none is left empty by missing files
        chosen = split_keys(root, list(present), split, split_fractions, seed, metadata)
        present = {name: captions for name, captions in present.items() if name in chosen}
    return [ImageRecord(name, folder / name, captions) for name, captions in present.items()]


def split_folder(root: Path, split: str) -> Path:
    """The subfolder of a split: `train/`, `validation/` (or `val/`, `valid/`), `test/`."""
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    expected = " or ".join(f"{name}/" for name in SPLIT_FOLDERS[split])
    raise FileNotFoundError(f"{root}: no folder of split '{split}' (expected {expected})")


def find_metadata(folder: Path) -> Path:
    """The folder's metadata file; exactly one of `metadata.jsonl` and `metadata.csv` must be there."""
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"no metadata file in {folder} (expected {' or '.join(METADATA_FILES)})")
    if len(found) > 1:
        raise UserError(f"{folder}: both {' and '.join(METADATA_FILES)} are there; keep one")
    return found[0]


def read_metadata(file: Path) -> dict[str, list[str]]:
    """Captions by file name, in the order of first appearance; rows of the same file name are merged in order."""
    cells = file.suffix == ".csv"  # csv cells are text: one may hold a JSON list of captions
    images: dict[str, list[str]] = {}
    for number, row in _csv_rows(file) if cells else _jsonl_rows(file):
        where = f"{file} line {number}"
        images.setdefault(file_name(row, where), []).extend(row_captions(row, where, cells))
    if not images:
        raise UserError(f"{file}: no rows")
    return images


def file_name(row: dict, where: str) -> str:
    """A row's image path, relative to its metadata file's folder (normalised: `./a.png` is `a.png`)."""
    if "file_name" not in row:
        raise UserError(f"{where}: no field 'file_name'")
    name = row["file_name"]
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: field 'file_name' must be a non-empty string")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"{where}: field 'file_name' must be a path inside the metadata file's folder, not '{name}'")
    return path.as_posix()


def row_captions(row: dict, where: str, cells: bool = False) -> list[str]:
    """The captions of a row, from its first caption field (`text`, `caption`, `captions`)."""
    field = next((name for name in CAPTION_FIELDS if name in row), None)
    if field is None:
        expected = ", ".join(f"'{name}'" for name in CAPTION_FIELDS)
        raise UserError(f"{where}: no caption field (expected one of {expected})")
    return caption_values(row[field], field, where, cells)


def caption_values(value, field: str, where: str, cells: bool = False) -> list[str]:
    """A caption field's value as a list of captions: a string, or a list of strings (in a csv cell, as JSON)."""
    if cells and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a caption that happens to start with "["
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not all(isinstance(caption, str) for caption in captions):
        raise UserError(f"{where}: field '{field}' must be a string or a list of strings")
    if not captions or not all(caption.strip() for caption in captions):
        raise UserError(f"{where}: field '{field}' holds an empty caption")
    return captions


def _jsonl_rows(file: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each non-blank line."""
    for number, line in enumerate(_read_text(file, "utf-8").split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{file} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{file} line {number}: expected a JSON object, found {type(row).__name__}")
        yield number, row


def _csv_rows(file: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each record after the header; the cells a short row lacks are left out of it."""
    text = _read_text(file, "utf-8-sig")  # -sig: the byte-order mark that Excel writes
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": quoted cells may hold line breaks
    try:
        for row in reader:
            yield reader.line_num, {key: value for key, value in row.items() if key is not None and value is not None}
    except csv.Error as error:
        raise UserError(f"{file} line {reader.line_num}: not valid CSV ({error})") from None


def _read_text(file: Path, encoding: str) -> str:
    try:
        return file.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise UserError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
