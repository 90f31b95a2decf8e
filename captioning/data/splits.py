"""Train/val/test splits of a dataset that comes without them: a seeded shuffle cut by fractions, kept in `splits.json`.

The split is drawn once and written beside the data (atomically), so that later runs, other processes and other
machines train and score on the same images; delete the file to draw again. Used by the folder and Parquet readers.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

from captioning.data.coco import read_json
from captioning.errors import UserError, UserNotice
from captioning.files import write_json

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLITS_FILE = "splits.json"
_warned: set[tuple] = set()  # one warning per file and reason, though each split is loaded on its own


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split '{split}': not one of {', '.join(SPLITS)}")


def check_fractions(fractions: dict[str, float] | None) -> dict[str, float]:
    """The fractions of each split, summing to 1; a split not named gets none. None: 80/10/10."""
    if fractions is None:
        return dict(DEFAULT_FRACTIONS)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise UserError(f"split_fractions: '{unknown[0]}' is not one of {', '.join(SPLITS)}")
    if any(not isinstance(value, (int, float)) or value < 0 for value in fractions.values()):
        raise UserError(f"split_fractions {fractions}: each fraction must be a number >= 0")
    total = sum(fractions.values())
    if total <= 0:
        raise UserError(f"split_fractions {fractions}: at least one fraction must be above 0")
    return {split: fractions.get(split, 0) / total for split in SPLITS}


def draw_splits(keys: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffles the distinct keys with `seed` and cuts them by `fractions` (largest remainders). Every split with a
    fraction above 0 gets at least one key when there are enough keys, taken from the largest split."""
    order = sorted(set(keys))
    random.Random(seed).shuffle(order)
    n = len(order)
    counts = {split: int(fractions[split] * n) for split in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda split: fractions[split] * n - counts[split], reverse=True)
    for split in by_remainder[: n - sum(counts.values())]:
        counts[split] += 1
    for split in SPLITS:
        largest = max(SPLITS, key=counts.get)
        if fractions[split] > 0 and counts[split] == 0 and counts[largest] > 1:
            counts[split], counts[largest] = 1, counts[largest] - 1
    drawn, start = {}, 0
    for split in SPLITS:
        drawn[split] = sorted(order[start : start + counts[split]])
        start += counts[split]
    return drawn


def split_keys(
    folder: Path, keys: list[str], split: str, fractions: dict[str, float] | None, seed: int, source: Path
) -> set[str]:
    """The keys of `split`: as `folder/splits.json` lists them when it exists, else drawn and written there.

    Args:
        folder: where `splits.json` is kept, beside the data.
        keys: every image of the data (file names or image ids), each once.
        split: "train", "val" or "test".
        fractions: the share of each split (None: 80/10/10), used when the split is drawn.
        seed: the shuffle's seed, used when the split is drawn.
        source: the data file or folder, for messages.
    """
    check_split(split)
    asked, fractions = fractions, check_fractions(fractions)
    file = folder / SPLITS_FILE
    if file.is_file():
        stored, splits = _read_splits(file)
        if asked is not None and (stored.get("fractions"), stored.get("seed")) != (fractions, seed):
            _warn_once(
                (file, "kept"),
                f"{file} was drawn with fractions {stored.get('fractions')} and seed {stored.get('seed')}; it is kept "
                "(delete it to split again with the fractions and seed asked for now)",
            )
        listed = set().union(*splits.values())
        left_out = [key for key in keys if key not in listed]
        if left_out:
            _warn_once(
                (file, "left out", len(left_out)),
                f"{len(left_out)} of the {len(keys)} images of {source} are not in {file} and are left out; delete "
                f"{file} to split again",
            )
    else:
        splits = draw_splits(keys, fractions, seed)
        try:
            write_json(file, {"seed": seed, "fractions": fractions, **splits})
        except OSError as error:  # a read-only dataset: the same seed draws the same split next time
            _warn_once((file, "unwritable"), f"cannot write {file} ({error.strerror}); using the split drawn now")
    present = set(keys)  # images listed in splits.json but gone from the data are passed over
    chosen = set(splits[split]) & present
    if not chosen:
        counts = ", ".join(f"{name} {len(set(splits[name]) & present)}" for name in SPLITS)
        raise UserError(f"{source}: split '{split}' has no images ({len(present)} split as {counts}; see {file})")
    return chosen


def _read_splits(file: Path) -> tuple[dict, dict[str, list[str]]]:
    """The file's content and its lists of image names by split."""
    data = read_json(file, "split file")
    for split in SPLITS:
        names = data.get(split, [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise UserError(f"{file}: field '{split}' must be a list of image names; delete the file to split again")
    return data, {split: data.get(split, []) for split in SPLITS}


def _warn_once(key: tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserNotice, stacklevel=4)
