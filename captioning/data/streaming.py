"""A caption split as LitData chunks: the sample that `captioning prepare` writes for each image, the StreamingDataset
that turns it back into the item `CaptionDataset` yields, and the StreamingDataLoader that batches it.

Each sample holds the image resized to a square at the size training needs, as JPEG bytes, with its id and all of its
captions. Beside the chunks, `captions.json` (COCO captions format) gives the references without reading the images,
and `manifest.json` says how the split was packed. Sharding over processes, nodes and loader workers, shuffling, and
the loader state that lets a run resume mid-epoch belong to LitData (Lightning's data engine).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from litdata import StreamingDataLoader, StreamingDataset
from PIL import Image
from torchvision import transforms as T

from captioning.data.coco import ImageRecord, read_json
from captioning.data.transforms import apply_transform, load_image
from captioning.errors import UserError, UserNotice, first_line
from captioning.seeds import derived_seed

CAPTIONS_FILE = "captions.json"  # the split's references, COCO captions format
MANIFEST_FILE = "manifest.json"  # how the split was packed: image size, count, source
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "hf://")


class PackRecord:
    """An image record -> the sample that `litdata.optimize` writes; None (left out, with a warning) when the image
    cannot be read.

    Args:
        size: side of the stored square in pixels; the image is resized without cropping, as `build_transform` does.
        interpolation: the encoder's resampling ("bicubic", "bilinear", ...), from its timm data config.
        quality: JPEG quality of the stored image.
    """

    def __init__(self, size: int, interpolation: str = "bicubic", quality: int = 90) -> None:
        self.size, self.interpolation, self.quality = size, interpolation, quality

    def __call__(self, record: ImageRecord) -> dict | None:
        try:
            # a JPEG decodes at the smallest DCT scale that covers it; a Parquet row's image is in memory
            if record.data is None:
                image = load_image(record.path, size=self.size)
            else:
                image = load_image(record.data, size=self.size, name=f"{record.path} [{record.image_id}]")
        except OSError as error:
            warnings.warn(f"skipping unreadable image: {error}", UserNotice, stacklevel=2)
            return None
        resize = T.Resize((self.size, self.size), interpolation=T.InterpolationMode(self.interpolation), antialias=True)
        buffer = io.BytesIO()
        resize(image).save(buffer, format="JPEG", quality=self.quality)
        # Ids and captions as JSON text: a fixed layout for every sample, whatever the number of captions or id type.
        return {
            "image": buffer.getvalue(),
            "image_id": json.dumps(record.image_id),
            "captions": json.dumps(record.captions),
        }


def decode_image(data: bytes | memoryview) -> Image.Image:
    """The stored JPEG bytes as an RGB PIL image; OSError when they cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(f"cannot decode a stored image ({error})") from None


class CaptionStreamingDataset(StreamingDataset):
    """The packed images of one split, streamed from a local folder or an object-store URL (s3://...).

    Items are those of `CaptionDataset`: {"image": tensor (3, S, S) or None when unreadable, "image_id", "captions"}.

    Args:
        input_dir: the folder that `captioning prepare --out` wrote, or its copy in object storage.
        transform: PIL image -> tensor, the same as the folder path's (`build_transform`).
        shuffle: a new order each epoch (training).
        drop_last: even out the processes by dropping the last items (training); None: LitData's default, True under
            several processes.
        seed: the shuffle's seed, the same on every process.
        **kwargs: passed on to `litdata.StreamingDataset` (cache_dir, max_cache_size, storage_options, ...).
    """

    def __init__(
        self, input_dir: str, transform, shuffle: bool = False, drop_last: bool | None = None, seed: int = 0, **kwargs
    ) -> None:
        super().__init__(str(input_dir), shuffle=shuffle, drop_last=drop_last, seed=seed, **kwargs)
        # not `self.transform`: StreamingDataset applies an attribute of that name to the raw sample itself
        self.image_transform = transform
        self.records = load_packed_records(str(input_dir), kwargs.get("storage_options"))

    @property
    def num_images(self) -> int:
        """Images in the packed split, over all processes."""
        return sum(end - start for start, end in self.region_of_interest)

    def __getitem__(self, index) -> dict:
        sample = super().__getitem__(index)
        image_id = json.loads(sample["image_id"])
        item = int(getattr(index, "index", index))  # LitData's ChunkedIndex, or an int
        # training's crop and captions' pick, keyed by seed, epoch and item as on the folder path (see seeds)
        seed = derived_seed(self.seed, self.current_epoch, item) if self.shuffle else None
        try:
            image = apply_transform(self.image_transform, decode_image(sample["image"]), seed)
        except OSError as error:
            warnings.warn(f"skipping unreadable image {image_id}: {error}", UserNotice, stacklevel=2)
            image = None
        return {"image": image, "image_id": image_id, "captions": json.loads(sample["captions"]), "seed": seed}


class CaptionStreamingLoader(StreamingDataLoader):
    """LitData's loader, ready for the next epoch after a resumed one.

    After `load_state_dict` mid-epoch, LitData replays the rest of that epoch on the next iteration and only forgets
    the loaded state when an iteration runs to its end. Lightning stops drawing once it has an epoch's known number of
    batches, before that end, so the next epoch would replay the finished one's state again and yield nothing.
    """

    def __iter__(self):
        # the count that `state_dict()` reports, read directly: calling it here would write the fresh dataset's epoch
        # over the restored one's, and a run resumed in its second epoch would replay the first one's order
        if self.restore and self._num_samples_yielded_streaming >= len(self.dataset):
            self.restore = False  # the resumed epoch has been drawn to its end: the next one starts afresh
        yield from super().__iter__()


def streaming_loader(
    dataset: CaptionStreamingDataset, batch_size: int, collate, num_workers: int, train: bool
) -> CaptionStreamingLoader:
    """Batches of a streamed split. Lightning sees an iterable dataset, so it adds no DistributedSampler, and a
    stateful loader, so it saves the loader's position in each checkpoint and restores it on resume."""
    if not train:
        # LitData deals whole batches to the processes and what is left to the last one: a split smaller than
        # processes x batch size would leave a process nothing to evaluate, which Lightning refuses.
        batch_size = min(batch_size, max(1, dataset.num_images // dataset.distributed_env.world_size))
    return CaptionStreamingLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_PREFIXES)


def read_packed_file(input_dir: str, name: str, what: str, storage_options: dict | None = None) -> dict:
    """A JSON file that `captioning prepare` wrote beside the chunks, from a folder or object storage (reached with
    LitData's `storage_options`, e.g. {"endpoint_url": ...} for an S3-compatible store)."""
    if not is_remote(input_dir):
        return read_json(Path(input_dir) / name, what)
    from litdata.streaming.downloader import get_downloader

    url = f"{input_dir.rstrip('/')}/{name}"
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, name)
        try:
            get_downloader(input_dir, folder, [], storage_options).download_file(url, local)
        except Exception as error:  # each object store raises its own kind, some over many lines
            raise FileNotFoundError(f"{what} not found: {url} ({first_line(error)})") from None
        if not os.path.exists(local):  # some downloaders pass over a missing object in silence
            raise FileNotFoundError(f"{what} not found: {url}")
        return read_json(local, what)


def load_packed_records(input_dir: str, storage_options: dict | None = None) -> list[ImageRecord]:
    """The images and captions of a packed split, read from its captions file (no image is read); `path` is the
    image's original file name."""
    path = f"{str(input_dir).rstrip('/')}/{CAPTIONS_FILE}"
    what = "captions file of a packed split (captioning prepare)"
    data = read_packed_file(str(input_dir), CAPTIONS_FILE, what, storage_options)
    captions: dict = {}
    try:
        for annotation in data["annotations"]:
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
        return [
            ImageRecord(image["id"], Path(image["file_name"]), captions.get(image["id"], []), image.get("scene"))
            for image in data["images"]
        ]
    except (KeyError, TypeError) as error:
        raise UserError(f"{path}: not a COCO captions file written by captioning prepare (missing {error})") from None


def coco_captions(records: list[ImageRecord]) -> dict:
    """Records in the COCO captions format (with each shapes image's scene, which grounds its captions)."""
    images, annotations = [], []
    for record in records:
        # An image held in memory has no file of its own: its id (a Parquet row's path or row) names it.
        name = Path(record.path).name if record.data is None else str(record.image_id)
        image = {"id": record.image_id, "file_name": name}
        if record.scene is not None:
            image["scene"] = record.scene
        images.append(image)
        for caption in record.captions:
            annotations.append({"id": len(annotations), "image_id": record.image_id, "caption": caption})
    return {"images": images, "annotations": annotations}
