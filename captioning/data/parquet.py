"""Parquet files of images and captions, as Hugging Face `datasets` writes them (`to_parquet`, `push_to_hub`).

An image column (`image`, `img`, `jpg` or `png`) holds HF's Image struct {"bytes", "path"} or the encoded image as
binary; a caption column is as in the folder layout (`text`, `caption` or `captions`: a string or a list of strings,
or one row per caption). Files named by split as on the Hub (`train-00000-of-00002.parquet`, `validation-*`, `test-*`,
or inside `train/`...) give the splits; otherwise all rows are split by fractions (see `splits.py`). Records keep each
image's bytes in memory (`ImageRecord.data`). See https://huggingface.co/docs/datasets/image_dataset.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from captioning.data.coco import ImageRecord, report_missing
from captioning.data.folder import CAPTION_FIELDS, caption_values
from captioning.data.splits import check_split, split_keys
from captioning.errors import UserError, UserNotice, first_line

IMAGE_COLUMNS = ("image", "img", "jpg", "png")  # the first one a file has holds its images
SPLIT_WORDS = {
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
WORD_SPLITS = {word: split for split, words in SPLIT_WORDS.items() for word in words}
BATCH_ROWS = 64  # rows converted to Python at a time: images can be large


@dataclass
class _Image:
    """One distinct image of the files being read, with the captions of all of its rows."""

    file: Path
    row: int  # its first row in `file`
    path: str | None  # the Image struct's path
    data: bytes | None
    captions: list[str] = field(default_factory=list)


def load_parquet_records(
    root: str | Path, split: str, split_fractions: dict[str, float] | None = None, seed: int = 0
) -> list[ImageRecord]:
    """The images of one split, each with all of its captions, in the files' order.

    Args:
        root: a Parquet file or a folder of them (at any depth).
        split: "train", "val" or "test".
        split_fractions: the share of each split when no file name gives one (default 80/10/10); `splits.json`, once
            written beside the files, is kept and wins.
        seed: the seed of the shuffle that draws the splits.

    Returns:
        Records with the encoded image in `data` and the Parquet file in `path`; `image_id` is the Image struct's path
        when it names one image only, else "<file, without .parquet, relative to root>/<row>". An Image struct with a
        path and no bytes gives a record of that file (relative to the Parquet file), as HF reads it.
    """
    check_split(split)
    root = Path(root)
    parquet = _pyarrow_parquet()
    files = parquet_files(root)
    base = root if root.is_dir() else root.parent
    named = {file: file_split(file, base) for file in files}
    if any(named.values()):  # the files are the splits
        images = _image_ids(_read_images(parquet, _files_of_split(named, root, split)), base)
        if not images:
            raise UserError(f"{root}: the Parquet files of split '{split}' have no rows")
    else:
        images = _image_ids(_read_images(parquet, files), base)
        if not images:  # nothing to split: no splits.json that later rows would be left out of
            raise UserError(f"{root}: no rows")
        keys = split_keys(base, list(images), split, split_fractions, seed, root)
        images = {image_id: image for image_id, image in images.items() if image_id in keys}

    records, missing = [], 0
    for image_id, image in images.items():
        if image.data is not None:
            records.append(ImageRecord(image_id, image.file.absolute(), image.captions, data=image.data))
            continue
        file = (image.file.parent / image.path).absolute()  # a path without bytes: a file beside the Parquet file
        if file.is_file():
            records.append(ImageRecord(image_id, file, image.captions))
        else:
            missing += 1
    report_missing(missing, len(records), base, root)
    return records


def parquet_files(root: Path) -> list[Path]:
    """`root` itself, or the `.parquet` files under it (hidden folders and files left out), sorted."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"Parquet file or folder not found: {root}")
    files = sorted(
        file
        for file in root.rglob("*.parquet")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"no .parquet file in {root}")
    return files


def _files_of_split(named: dict[Path, str | None], root: Path, split: str) -> list[Path]:
    """The files whose names give `split`; those that give none are left out, with a warning."""
    unnamed = [file for file, name in named.items() if name is None]
    if unnamed:
        warnings.warn(
            f"{len(unnamed)} Parquet files under {root} name no split (e.g. {unnamed[0].name}); they are left out",
            UserNotice,
            stacklevel=3,
        )
    chosen = [file for file, name in named.items() if name == split]
    if not chosen:
        words = ", ".join(f"{word}-*" for word in SPLIT_WORDS[split])
        found = ", ".join(sorted({name for name in named.values() if name}))
        raise UserError(f"{root}: no Parquet file of split '{split}' (named {words}); found splits: {found}")
    return chosen


def file_split(file: Path, base: Path) -> str | None:
    """The split that a file's name says, as on the Hub (`train-00000-of-00002`, `validation.parquet`), else its
    nearest folder's (`train/0000.parquet`); None when neither says one."""
    first_word = re.split(r"[-._ ]", file.stem.lower())[0]
    for word in (first_word, *reversed([part.lower() for part in file.relative_to(base).parent.parts])):
        if word in WORD_SPLITS:
            return WORD_SPLITS[word]
    return None


def _read_images(parquet, files: list[Path]) -> list[_Image]:
    """The distinct images of the files; rows of the same image (same path and bytes) are merged, in order."""
    images: dict[tuple, _Image] = {}
    for file in files:
        try:
            reader = parquet.ParquetFile(file)
        except Exception as error:  # pyarrow raises its own kinds (ArrowInvalid, OSError) for a file it cannot read
            raise UserError(f"{file}: not a readable Parquet file ({first_line(error)})") from None
        image_column, caption_column = _columns(reader.schema_arrow, file)
        row = 0
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=[image_column, caption_column]):
            values = batch.column(image_column).to_pylist()
            for value, captions in zip(values, batch.column(caption_column).to_pylist(), strict=True):
                where = f"{file} row {row}"
                captions = caption_values(captions, caption_column, where)
                path, data = _image_value(value, image_column, where)
                key = (path, hashlib.sha256(data).hexdigest() if data is not None else None)
                images.setdefault(key, _Image(file, row, path, data)).captions.extend(captions)
                row += 1
    return list(images.values())


def _image_ids(images: list[_Image], base: Path) -> dict[str, _Image]:
    """Images by id: the Image struct's path when no other image has it, else "<file without .parquet>/<row>"."""
    paths = Counter(image.path for image in images if image.path)
    by_id = {}
    for image in images:
        if image.path and paths[image.path] == 1:
            by_id[image.path] = image
        else:  # no path, or one shared by different images (a bare file name, say)
            by_id[f"{image.file.relative_to(base).with_suffix('').as_posix()}/{image.row}"] = image
    return by_id


def _columns(schema, file: Path) -> tuple[str, str]:
    """The image and caption columns of a file, checked for their types."""
    import pyarrow as pa

    image = next((name for name in IMAGE_COLUMNS if name in schema.names), None)
    caption = next((name for name in CAPTION_FIELDS if name in schema.names), None)
    columns = ", ".join(schema.names)
    if image is None:
        expected = ", ".join(f"'{name}'" for name in IMAGE_COLUMNS)
        raise UserError(f"{file}: no image column (expected one of {expected}; the file has {columns})")
    if caption is None:
        expected = ", ".join(f"'{name}'" for name in CAPTION_FIELDS)
        raise UserError(f"{file}: no caption column (expected one of {expected}; the file has {columns})")
    image_type, caption_type = schema.field(image).type, schema.field(caption).type
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    if not (any(test(image_type) for test in binary) or _is_image_struct(image_type)):
        raise UserError(f"{file}: column '{image}' must hold images (HF's Image struct or binary), not {image_type}")
    text = (pa.types.is_string, pa.types.is_large_string)
    listed = (pa.types.is_list, pa.types.is_large_list)
    if not (
        any(test(caption_type) for test in text)
        or (any(test(caption_type) for test in listed) and any(test(caption_type.value_type) for test in text))
    ):
        raise UserError(f"{file}: column '{caption}' must hold strings or lists of strings, not {caption_type}")
    return image, caption


def _is_image_struct(column_type) -> bool:
    """Whether a column type is HF's Image struct: {"bytes": binary, "path": string}."""
    import pyarrow as pa

    if not pa.types.is_struct(column_type):
        return False
    names = {column_type.field(i).name for i in range(column_type.num_fields)}
    return "bytes" in names or "path" in names


def _image_value(value, column: str, where: str) -> tuple[str | None, bytes | None]:
    """(path, bytes) of a row's image: an Image struct {"bytes", "path"}, or the bytes themselves."""
    path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (None, value)
    if data is None and not path:
        raise UserError(f"{where}: field '{column}' holds no image (neither bytes nor a path)")
    return path or None, data


def _pyarrow_parquet():
    """pyarrow.parquet, imported when Parquet is read: it is an optional dependency."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise UserError('reading Parquet files needs pyarrow: pip install -e ".[parquet]"') from None
    return parquet
