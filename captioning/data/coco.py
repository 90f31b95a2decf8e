"""Caption annotation files: COCO captions JSON (read with pycocotools) and Karpathy-split JSON.

COCO: the official `captions_{train,val}{2014,2017}.json` with one image folder per split (Chen et al., 2015,
"Microsoft COCO Captions"). Karpathy: `dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`
(Karpathy & Fei-Fei, 2015), whose images carry a `split` field; "restval" joins "train" by default.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pycocotools.coco import COCO

from captioning.errors import UserError, UserNotice


@dataclass
class ImageRecord:
    """One image and its reference captions; `scene` holds the ground truth of built-in shapes images.

    `data` holds the encoded image itself when it has no file of its own (a Parquet row); `path` then names the file
    it came from, for messages. Readers open `data` when it is set, else `path`.
    """

    image_id: int | str
    path: Path
    captions: list[str]
    scene: list[dict] | None = field(default=None, repr=False)
    data: bytes | None = field(default=None, repr=False)


def read_json(path: str | Path, what: str) -> dict:
    """Reads a JSON object, with one-line errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a valid JSON file ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def _require(record: dict, key: str, path: Path, where: str):
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{path}: {where} has no field '{key}'")
    return record[key]


def load_coco_captions(annotation_file: str | Path, image_dir: str | Path) -> list[ImageRecord]:
    """Images of a COCO captions file that exist in `image_dir`, each with all of its captions.

    Images named by the file but absent from the folder are left out with a warning giving their count;
    when none is present the folder is wrong, and that is an error.
    """
    path, image_dir = Path(annotation_file), Path(image_dir)
    data = read_json(path, "COCO caption annotation file")
    for key in ("images", "annotations"):
        if not isinstance(_require(data, key, path, "the file"), list):
            raise UserError(f"{path}: field '{key}' must be a list")
    for i, image in enumerate(data["images"]):
        _require(image, "id", path, f"images[{i}]")
        _require(image, "file_name", path, f"images[{i}]")
    for i, annotation in enumerate(data["annotations"]):
        _require(annotation, "image_id", path, f"annotations[{i}]")
        if not isinstance(_require(annotation, "caption", path, f"annotations[{i}]"), str):
            raise UserError(f"{path}: annotations[{i}].caption must be a string")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()

    records, missing = [], 0
    for image_id in sorted(coco.imgs):
        image = coco.imgs[image_id]
        file = image_dir / image["file_name"]
        captions = [a["caption"] for a in coco.imgToAnns.get(image_id, [])]
        if not captions:
            continue
        if not file.is_file():
            missing += 1
            continue
        records.append(ImageRecord(image_id, file, captions, image.get("scene")))
    report_missing(missing, len(records), image_dir, path)
    return records


def load_karpathy_split(
    karpathy_file: str | Path, image_root: str | Path, split: str, restval_to_train: bool = True
) -> list[ImageRecord]:
    """Images of one split of a Karpathy JSON file that exist under `image_root`.

    An image's path is `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr8k/30k, which have
    no `filepath`). Its id is `cocoid` when present, else `imgid`.
    """
    path, image_root = Path(karpathy_file), Path(image_root)
    data = read_json(path, "Karpathy split file")
    images = _require(data, "images", path, "the file")
    wanted = {split, "restval"} if split == "train" and restval_to_train else {split}
    records, missing = [], 0
    for i, image in enumerate(images):
        if _require(image, "split", path, f"images[{i}]") not in wanted:
            continue
        filename = _require(image, "filename", path, f"images[{i}]")
        sentences = _require(image, "sentences", path, f"images[{i}]")
        captions = [_require(s, "raw", path, f"images[{i}].sentences") for s in sentences]
        image_id = image.get("cocoid", image.get("imgid", i))
        file = image_root / image.get("filepath", "") / filename
        if not file.is_file():
            missing += 1
            continue
        records.append(ImageRecord(image_id, file, captions))
    if not records and not missing:
        raise UserError(f"{path}: no image has split '{split}'")
    report_missing(missing, len(records), image_root, path)
    return records


def report_missing(missing: int, present: int, folder: Path, annotation_file: Path) -> None:
    """Warns that `missing` images named by `annotation_file` are not in `folder`; an error when none is there."""
    if missing and not present:
        raise FileNotFoundError(
            f"none of the {missing} images named by {annotation_file} is in {folder}: is the image folder right?"
        )
    if missing:
        warnings.warn(
            f"{missing} of the {missing + present} images named by {annotation_file} are not in {folder}; "
            "training and evaluation leave them out",
            UserNotice,
            stacklevel=3,
        )
