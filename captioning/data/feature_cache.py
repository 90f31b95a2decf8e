"""A frozen encoder's tokens of a split, computed once and read back instead of the images.

One folder per split holds `key.json` (what the tokens depend on: encoder name, a hash of its weights, its output
stride, image size, preprocessing, and the split's images), `features.npy` (N, M, C_enc) float16, memory-mapped when
read, and `index.json` (the image id of each row, and the rows whose image could not be read). A folder is written
beside its final place and renamed into it, so a killed fill leaves no half cache; a different key rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from captioning.data.coco import ImageRecord, read_json
from captioning.data.sampler import Draw
from captioning.errors import UserError
from captioning.files import write_json

FORMAT_VERSION = 1
FP16_MAX = float(np.finfo(np.float16).max)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values): changes whenever its weights do."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def images_digest(records: Sequence[ImageRecord]) -> str:
    """SHA-256 of the split's image ids, in order, with each file's name, size and modification time: regenerated
    images under the same ids (e.g. shapes at another size) must not reuse old tokens."""
    digest = hashlib.sha256()
    for record in records:
        if record.data is not None:  # held in memory (a Parquet row): its bytes say whether it changed
            file = (Path(record.path).name, len(record.data), hashlib.sha256(record.data).hexdigest())
        else:
            try:
                stat = os.stat(record.path)
                file = (Path(record.path).name, stat.st_size, stat.st_mtime_ns)
            except OSError:  # unreadable now: its row is marked missing when the cache is filled
                file = (Path(record.path).name, None, None)
        digest.update(json.dumps([record.image_id, *file]).encode())
    return digest.hexdigest()


def cache_key(encoder_name: str, encoder: nn.Module, image_size: int | None, preprocessing: dict, records) -> dict:
    """Everything the cached tokens depend on, as JSON; the cache is rebuilt when any of it changes.

    Args:
        encoder_name: timm model name.
        encoder: the frozen encoder, hashed (weights and buffers); its `output_stride` (an `ImageEncoder`'s, None
            for the trunk's own) changes the tokens without changing the weights.
        image_size: square input size, None for the encoder's default.
        preprocessing: the transform's settings (mean, std, interpolation, input size, and its repr).
        records: the split's images, in the order of the rows.
    """
    return {
        "format": FORMAT_VERSION,
        "encoder": encoder_name,
        "weights_sha256": weights_digest(encoder),
        "output_stride": getattr(encoder, "output_stride", None),
        "image_size": image_size,
        "preprocessing": json.loads(json.dumps(preprocessing, default=str)),  # tuples -> lists, as read back
        "num_images": len(records),
        "images_sha256": images_digest(records),
        "dtype": "float16",
    }


class FeatureCache:
    """An open cache folder: the rows of `features.npy` by image id.

    Attributes:
        folder: the split's cache folder.
        key: what its tokens depend on (see `cache_key`).
        fill_seconds: seconds spent computing the tokens in this process; None when an existing cache was reused.
    """

    def __init__(self, folder: str | Path, key: dict, fill_seconds: float | None = None) -> None:
        self.folder, self.key, self.fill_seconds = Path(folder), key, fill_seconds
        self._check_key()
        index = read_json(self.folder / "index.json", "feature cache index")
        self.rows = {image_id: row for row, image_id in enumerate(index["image_ids"])}
        self.missing = set(index["missing"])
        self._features: np.ndarray | None = None  # opened in each loader process, never pickled into one

    def _check_key(self) -> None:
        key_file = self.folder / "key.json"
        found = read_json(key_file, "feature cache key") if key_file.is_file() else None
        if found != self.key:
            changed = sorted(k for k in self.key if found is None or found.get(k) != self.key[k])
            raise UserError(f"feature cache {self.folder} does not match this run (differs in: {', '.join(changed)})")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_features": None}

    @property
    def features(self) -> np.ndarray:
        """(N, M, C_enc) float16, memory-mapped: a row is read from disk (or the page cache) when indexed."""
        if self._features is None:
            self._features = np.load(self.folder / "features.npy", mmap_mode="r")
            self._check_key()  # after opening: another run filling the same folder since would have changed its key
        return self._features

    def get(self, image_id) -> torch.Tensor | None:
        """The tokens (M, C_enc) float16 of an image; None if its image could not be read when the cache was filled."""
        if image_id in self.missing:
            return None
        return torch.from_numpy(np.array(self.features[self.rows[image_id]]))


def ensure_cache(
    folder: str | Path,
    key: dict,
    images: Dataset,
    encoder: nn.Module,
    batch_size: int,
    num_workers: int = 0,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> FeatureCache:
    """The cache in `folder`: reused when its key matches `key`, otherwise (re)computed with `encoder`.

    Args:
        folder: the split's cache folder.
        key: from `cache_key`.
        images: the split's images as a CaptionDataset (items {"image": (3, S, S) or None, "image_id", ...}), in row
            order and with the transform the key describes.
        encoder: images (B, 3, S, S) -> tokens (B, M, C_enc), on the device to run on.
        batch_size: images per encoder call.
        num_workers: image loading processes.
        forward_context: the training's precision context (e.g. autocast), so tokens match the uncached path's.
    """
    folder = Path(folder)
    try:
        return FeatureCache(folder, key)
    except (ValueError, FileNotFoundError, KeyError) as error:
        reason = str(error) if (folder / "key.json").is_file() else f"feature cache {folder} is new"
    rank_zero_info(f"{reason}: computing the tokens of {len(images)} images once")
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        _fill(temporary, images, encoder, batch_size, num_workers, forward_context)
        write_json(temporary / "key.json", key)  # last: a folder with a key is a complete one
        _replace_folder(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    rank_zero_info(f"feature cache {folder}: {len(images)} images' {key['encoder']} tokens in {seconds:.1f} s")
    return FeatureCache(folder, key, fill_seconds=seconds)


@torch.no_grad()
def _fill(folder: Path, images: Dataset, encoder: nn.Module, batch_size: int, num_workers: int, forward_context):
    """Writes features.npy (N, M, C_enc) float16 and index.json into `folder`, one batch of images at a time."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(
        images,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
        generator=torch.Generator(),  # its own: the global one is the training's (see seeds)
        pin_memory=device.type == "cuda",
    )
    features, image_ids, missing, row = None, [], [], 0
    try:
        for items in loader:
            good = [item for item in items if item["image"] is not None]
            tokens = None
            if good:
                with forward_context():
                    tokens = encoder(torch.stack([item["image"] for item in good]).to(device))  # (b, M, C_enc)
                tokens = _to_float16(tokens.float(), folder)
            if features is None and tokens is not None:
                shape = (len(images), *tokens.shape[1:])
                features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=shape)
            position = 0
            for item in items:
                image_ids.append(item["image_id"])
                if item["image"] is None:
                    missing.append(item["image_id"])
                else:
                    features[row] = tokens[position]
                    position += 1
                row += 1
        if features is None:
            raise UserError(f"feature cache {folder.parent}: none of the {len(images)} images could be read")
        features.flush()
    finally:
        encoder.train(was_training)
    del features  # closes the memory map before the folder is renamed
    write_json(folder / "index.json", {"image_ids": image_ids, "missing": missing})


def _to_float16(tokens: torch.Tensor, folder: Path) -> np.ndarray:
    """Tokens (b, M, C_enc) as float16 numpy; values beyond float16's range would become inf, so they are refused."""
    peak = tokens.abs().max().item()
    if not peak <= FP16_MAX:
        raise UserError(f"feature cache {folder.parent}: encoder tokens reach {peak:g}, beyond float16's range")
    return tokens.half().cpu().numpy()


def _replace_folder(new: Path, folder: Path) -> None:
    """Renames `new` to `folder`, removing an old `folder` (renamed aside first: a directory cannot be replaced)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class FeatureDataset(Dataset):
    """A split served from its feature cache: items {"features": (M, C_enc) float16 or None, "image_id", "captions"}."""

    def __init__(self, records: Sequence[ImageRecord], cache: FeatureCache) -> None:
        self.records, self.cache = list(records), cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | Draw) -> dict:
        index, seed = Draw.split(key)  # the seed picks the captions (TrainCollate)
        record = self.records[index]
        features = self.cache.get(record.image_id)
        return {"features": features, "image_id": record.image_id, "captions": record.captions, "seed": seed}
