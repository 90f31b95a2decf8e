"""The LightningDataModule: records of a split -> (image tensor, captions) -> batches of B images x K captions.

Sources: the built-in shapes dataset (a basic and a hard setting, generated on first use), COCO caption files with
image folders, a Karpathy split file, people's own folders of images with a metadata file (Hugging Face's ImageFolder
layout), or Parquet files with image bytes. Each training batch carries every image once with K of its captions, so that
the model encodes an image once for all of them. Unreadable images are skipped and counted, never fatal.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from captioning.data import shapes, shapes_hard
from captioning.data.coco import ImageRecord, load_coco_captions, load_karpathy_split
from captioning.data.feature_cache import FeatureCache, FeatureDataset, cache_key, ensure_cache
from captioning.data.folder import load_folder_records
from captioning.data.parquet import load_parquet_records
from captioning.data.sampler import Draw, ResumableDataLoader, ResumableSampler
from captioning.data.shapes import annotation_path
from captioning.data.shapes_checks import ShapesCaptionChecks
from captioning.data.transforms import apply_transform, build_transform, data_config, load_image
from captioning.errors import UserError, UserNotice
from captioning.metrics.words import ENGLISH, check_language
from captioning.seeds import default_seed
from captioning.text.packing import pack_captions
from captioning.text.position_words import swap_left_right, swap_up_down
from captioning.text.tokenizer import CaptionTokenizer

SPLITS = ("train", "val", "test")
# A dataset's own checks of captions against its ground truth: ({image_id: caption}, a split's records) -> scores.
CaptionChecks = Callable[[dict, Sequence[ImageRecord]], dict[str, float]]
# The settings of the built-in data: each module writes its data (`ensure_shapes`), which `shapes_checks` checks
# captions against; each has its own folder, so that switching setting never overwrites the other.
SHAPES_LEVELS = {"basic": shapes, "hard": shapes_hard}
SHAPES_ROOTS = {"basic": "data/shapes", "hard": "data/shapes_hard"}
# Splits that `feature_cache` serves as encoder tokens. Validation and test read images: they score what
# `captioning caption` does (the whole model, full precision), and they run from checkpoints without a fit.
CACHED_SPLITS = ("train",)
HORIZONTAL, VERTICAL = 1, 2  # the mirrors of a view of a training image (see CaptionDataset)
# What `data.stream_options` may set on LitData's StreamingDataset: where and how chunks are fetched and cached, not
# what a process sees (order, sharding and subsampling stay ours, so that each image comes once per epoch).
STREAM_OPTIONS = ("cache_dir", "max_cache_size", "max_pre_download", "storage_options", "session_options")


class CaptionDataset(Dataset):
    """Images of one split with their reference captions; an unreadable image yields `image=None`.

    Index i + v * N (N images) is view v of image i: mirrored left to right when v has bit 1 (HORIZONTAL), top to
    bottom when it has bit 2 (VERTICAL), with the position words of its captions swapped so that they stay true
    ("left" and "right"; "above" and "below", "top" and "bottom"). A `ResumableSampler` with `views` asks for them.
    A `Draw` index also seeds the transform's random crop, and the item carries its seed for the captions' pick.
    """

    def __init__(self, records: Sequence[ImageRecord], transform) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return (self[index] for index in range(len(self)))  # the images as they are, each once

    def __getitem__(self, key: int | Draw) -> dict:
        index, seed = Draw.split(key)
        view, position = divmod(index, len(self.records))
        if not 0 <= view <= HORIZONTAL | VERTICAL:
            raise IndexError(f"index {index} is outside the {len(self.records)} images and their mirrored views")
        record = self.records[position]
        captions = record.captions
        try:
            # JPEGs are decoded at the smallest DCT scale that still covers the model's input (see transforms)
            source, name = (
                (record.path, None) if record.data is None else (record.data, f"{record.path} [{record.image_id}]")
            )
            image = load_image(source, size=getattr(self.transform, "decode_size", None), name=name)
            image = apply_transform(self.transform, image, seed)
        except OSError as error:
            warnings.warn(f"skipping unreadable image: {error}", UserNotice, stacklevel=2)
            image = None
        if view & HORIZONTAL:
            image = None if image is None else image.flip(-1)  # (3, H, W): columns reversed
            captions = [swap_left_right(caption) for caption in captions]
        if view & VERTICAL:
            image = None if image is None else image.flip(-2)  # (3, H, W): rows reversed
            captions = [swap_up_down(caption) for caption in captions]
        return {"image": image, "image_id": record.image_id, "captions": captions, "seed": seed}


class TrainCollate:
    """Stacks images (B, 3, H, W) and tokenizes K captions of each, packed one image per row (see `packing`)."""

    def __init__(self, tokenizer: CaptionTokenizer, captions_per_image: int, max_length: int) -> None:
        self.tokenizer, self.captions_per_image, self.max_length = tokenizer, captions_per_image, max_length

    def __call__(self, items: list[dict]) -> dict:
        batch = _collate_images(items)
        captions = []
        for item in items:
            if _inputs(item) is not None:
                captions += _pick(item["captions"], self.captions_per_image, item.get("seed"))
        tokens = self.tokenizer.encode(captions, self.max_length) if captions else torch.zeros(0, 2).long()
        batch.update(pack_captions(tokens, self.captions_per_image, self.tokenizer.pad_id))
        return batch


def _pick(captions: list[str], k: int, seed: int | None = None) -> list[str]:
    """K different captions when there are enough, drawn with `seed` (None: Python's global generator); otherwise
    all of them, repeated in turn."""
    if len(captions) >= k:
        return (random if seed is None else random.Random(seed)).sample(captions, k)
    return [captions[i % len(captions)] for i in range(k)]


def _inputs(item: dict) -> torch.Tensor | None:
    """An item's image (3, H, W), or its cached encoder tokens (M, C_enc); None when its image was unreadable."""
    return item["features"] if "features" in item else item["image"]


def _collate_images(items: list[dict]) -> dict:
    """Stacks images into "images" (B, 3, H, W), or cached tokens into "features" (B, M, C_enc)."""
    good = [item for item in items if _inputs(item) is not None]
    name = "features" if items and "features" in items[0] else "images"
    return {
        name: torch.stack([_inputs(item) for item in good]) if good else torch.zeros(0),
        "image_ids": [item["image_id"] for item in good],
        "skipped": len(items) - len(good),
    }


class CaptionDataModule(LightningDataModule):
    """Caption data for training, validation and testing.

    Args:
        dataset: "shapes" (built-in, generated under `root`), "coco" (`annotations` and `images` per split),
            "karpathy" (`karpathy_file` with images under `root`), "folder" (images under `root` with a
            metadata.jsonl or metadata.csv of `file_name` and `text`/`caption`/`captions`, in split folders or split
            by `split_fractions`) or "parquet" (Parquet files under `root`, with an image and a caption column).
        root: shapes: where the dataset is written (default data/shapes, data/shapes_hard for the hard level,
            data/shapes_zh in Chinese); karpathy: the folder that holds the images; folder, parquet: the data.
        split_fractions: folder, parquet: shares of train, val and test when the data has no splits of its own,
            drawn once with a fixed seed and written to splits.json beside it (default 0.8, 0.1, 0.1).
        language: the captions' language, which sets how they split into words for the vocabulary and the metrics
            (`captioning.metrics.words`: en PTB, zh jieba, ja characters, others Unicode words); kept in the
            checkpoint. Default: the built-in shapes' language, else "en".
        annotations: coco: caption annotation file per split, e.g. {"train": ".../captions_train2017.json"}.
        images: coco: image folder per split, e.g. {"train": ".../train2017"}.
        karpathy_file: karpathy: dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json.
        restval_to_train: karpathy: merge the "restval" images into "train".
        encoder: timm model name whose data config sets the preprocessing (linked from the model).
        image_size: square input size in pixels, None for the encoder's default (linked from the model).
        max_length: caption length limit in tokens, end token included (linked to the model).
        augment: random crops for training images.
        flip: mirror half of the training images left to right each epoch, swapping "left" and "right" in their
            captions. None: on for the built-in shapes, off otherwise (captions of photos may read text in them,
            which a mirror would garble).
        vertical_flip: also mirror half of them top to bottom, swapping "above" and "below", "top" and "bottom" ...
            Off by default: photos have gravity, and on the built-in shapes it measured worse (see the README).
        captions_per_image: K captions drawn per image in each training batch.
        min_word_frequency: words seen fewer times in the training captions become the unknown token.
        batch_size: images per training batch (each with K captions).
        eval_batch_size: images per validation and test batch.
        num_workers: data loading processes.
        shapes_image_size: shapes: side of the generated images in pixels.
        shapes_split_sizes: shapes: number of images per split.
        shapes_level: shapes: "basic" (one to three shapes on plain grey, lower-case template captions) or "hard"
            (two to six shapes in counted groups on textured backgrounds, captions written as people write them).
        shapes_language: shapes: "en", or "zh" for the basic level's captions written in Chinese.
        predict_split: the split that `captioning predict` captions into predictions.json.
        feature_cache: a folder for the frozen encoder's tokens of the training images, computed once (float16,
            memory-mapped) and read instead of the images; rebuilt when the encoder, its weights or output stride, the
            image size, the preprocessing or the images change. Needs model.freeze_encoder true and augment false.
        format: "folder" reads image files (small data, the built-in sets); "litdata" streams the splits that
            `captioning prepare` packed into LitData chunks (COCO scale, several processes and nodes).
        streams: litdata: the packed folder or object-store URL per split, e.g. {"train": "s3://bucket/coco/train"}.
        stream_options: litdata: keyword arguments for every split's `litdata.StreamingDataset`, e.g.
            {"cache_dir": "/nvme/chunks", "max_cache_size": "200GB", "storage_options": {"endpoint_url": URL}};
            each split caches its chunks in its own folder under cache_dir.
    """

    def __init__(
        self,
        dataset: Literal["shapes", "coco", "karpathy", "folder", "parquet"] = "shapes",
        root: str | None = None,
        split_fractions: dict[str, float] | None = None,
        language: str | None = None,
        annotations: dict[str, str] | None = None,
        images: dict[str, str] | None = None,
        karpathy_file: str | None = None,
        restval_to_train: bool = True,
        encoder: str = "test_convnext",
        image_size: int | None = None,
        max_length: int = 24,
        augment: bool = False,
        flip: bool | None = None,
        vertical_flip: bool = False,
        captions_per_image: int = 5,
        min_word_frequency: int = 5,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 2,
        shapes_image_size: int = 128,
        shapes_split_sizes: dict[str, int] | None = None,
        shapes_level: Literal["basic", "hard"] = "basic",
        shapes_language: Literal["en", "zh"] = "en",
        predict_split: Literal["train", "val", "test"] = "test",
        feature_cache: str | None = None,
        format: Literal["folder", "litdata"] = "folder",
        streams: dict[str, str] | None = None,
        stream_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if shapes_language != "en" and dataset == "shapes" and shapes_level != "basic":
            raise UserError(f"data.shapes_language '{shapes_language}' needs data.shapes_level 'basic'")
        if language is not None and check_language(language) != shapes_language and dataset == "shapes":
            raise UserError(f"data.language '{language}' does not match data.shapes_language '{shapes_language}'")
        if feature_cache and augment:
            raise UserError("data.feature_cache needs data.augment false: cached tokens are of the unaugmented image")
        for key, value in (("flip", flip), ("vertical_flip", vertical_flip)):
            if value and feature_cache:
                raise UserError(f"data.{key} needs data.feature_cache unset: cached tokens are of unmirrored images")
            if value and format == "litdata":
                raise UserError(f"data.{key} works with data.format 'folder' only, not 'litdata'")
        for key in stream_options or {}:
            if key not in STREAM_OPTIONS:
                raise UserError(f"data.stream_options.{key}: not one of {', '.join(STREAM_OPTIONS)}")
        self.save_hyperparameters()
        self.tokenizer: CaptionTokenizer | None = None
        self.datasets: dict[str, CaptionDataset] = {}
        self.feature_caches: dict[str, FeatureCache] = {}
        self._train_loader: DataLoader | None = None
        self._train_loader_state: dict | None = None  # from a checkpoint, for the next train loader

    @property
    def views(self) -> tuple[int, ...]:
        """The views a training image is seen in (see `CaptionDataset`), from data.flip and data.vertical_flip or
        their defaults for the dataset."""
        hp = self.hparams
        built_in = hp.dataset == "shapes" and hp.format == "folder" and not hp.feature_cache
        mirrors = [(HORIZONTAL, hp.get("flip")), (VERTICAL, hp.get("vertical_flip", False))]
        views = [0]
        for mirror, wanted in mirrors:
            if wanted or (wanted is None and built_in):
                views += [view | mirror for view in views]
        return tuple(views)

    @property
    def language(self) -> str:
        """The captions' language (data.language, or the built-in shapes' language)."""
        hp = self.hparams
        if hp.get("language"):
            return check_language(hp.language)
        return self.shapes_language if hp.dataset == "shapes" else ENGLISH

    @property
    def shapes_language(self) -> str:
        return self.hparams.get("shapes_language", "en")  # hyper-parameters of older checkpoints lack it

    @property
    def shapes_root(self) -> str:
        hp = self.hparams
        if hp.root:
            return hp.root
        return SHAPES_ROOTS[hp.shapes_level] + ("" if self.shapes_language == "en" else f"_{self.shapes_language}")

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.dataset == "shapes" and hp.format == "folder":
            language = self.shapes_language
            extra = {} if language == "en" else {"language": language}  # the hard level is English only
            SHAPES_LEVELS[hp.shapes_level].ensure_shapes(
                self.shapes_root, hp.shapes_image_size, hp.shapes_split_sizes, **extra
            )

    def load_records(self, split: str) -> list[ImageRecord]:
        """The images and captions of a split, as configured."""
        hp = self.hparams
        if hp.format == "litdata":
            from captioning.data.streaming import load_packed_records

            return load_packed_records(self._stream(split), (hp.stream_options or {}).get("storage_options"))
        if hp.dataset == "shapes":
            return load_coco_captions(annotation_path(self.shapes_root, split), Path(self.shapes_root) / split)
        if hp.dataset in ("folder", "parquet"):
            if not hp.root:
                raise UserError(f"data.root is required when data.dataset is '{hp.dataset}': the folder of the data")
            load = load_folder_records if hp.dataset == "folder" else load_parquet_records
            return load(hp.root, split, hp.get("split_fractions"))
        if hp.dataset == "karpathy":
            for field in ("karpathy_file", "root"):
                if not getattr(hp, field):
                    raise UserError(f"data.{field} is required when data.dataset is 'karpathy'")
            return load_karpathy_split(hp.karpathy_file, hp.root, split, hp.restval_to_train)
        for field in ("annotations", "images"):
            if split not in (getattr(hp, field) or {}):
                raise UserError(f"data.{field}.{split} is required when data.dataset is 'coco'")
        return load_coco_captions(hp.annotations[split], hp.images[split])

    def setup(self, stage: str) -> None:
        predict = (self.hparams.predict_split,)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": predict}[stage]
        for split in needed:
            if split not in self.datasets:
                hp = self.hparams  # 8-bit pixels to the device, a quarter of float32's bytes; the encoder normalises
                transform = build_transform(hp.encoder, hp.image_size, split == "train", hp.augment, uint8=True)
                self.datasets[split] = self._dataset(split, transform)
        if stage == "fit" and self.tokenizer is None:
            captions = (c for record in self.datasets["train"].records for c in record.captions)
            self.tokenizer = CaptionTokenizer.train(captions, self.hparams.min_word_frequency, self.language)

    def training_data(self) -> dict:
        """What the model is trained on, kept in its checkpoints: {"dataset": "shapes" (or "shapes hard", "coco",
        "karpathy"), "images": training images, before flips}; the demo page shows it."""
        name = self.hparams.dataset
        if name == "shapes" and self.hparams.shapes_level == "hard":
            name = "shapes hard"
        elif name == "shapes" and self.shapes_language != "en":
            name = f"shapes ({self.shapes_language})"
        train = self.datasets.get("train")
        if train is None:
            return {"dataset": name, "images": None}
        return {"dataset": name, "images": len(getattr(train, "records", train))}  # a streamed split has no records

    def _dataset(self, split: str, transform) -> Dataset:
        if self.hparams.format == "folder":
            return CaptionDataset(self.load_records(split), transform)
        from captioning.data.streaming import CaptionStreamingDataset

        # Training: a new order each epoch, the same on every process (LitData shards it); evaluation: each image once.
        train = split == "train"
        seed = default_seed()
        options = dict(self.hparams.stream_options or {})
        if "cache_dir" in options:  # a folder per split: each split's chunks and index have the same names
            options["cache_dir"] = os.path.join(options["cache_dir"], split)
        return CaptionStreamingDataset(
            self._stream(split), transform, shuffle=train, drop_last=train, seed=seed, **options
        )

    def _stream(self, split: str) -> str:
        if split not in (self.hparams.streams or {}):
            raise UserError(f"data.streams.{split} is required when data.format is 'litdata' (captioning prepare)")
        return self.hparams.streams[split]

    def fill_feature_cache(
        self, encoder: nn.Module, forward_context: Callable[[], AbstractContextManager] = nullcontext
    ) -> dict[str, dict]:
        """Computes the frozen encoder's tokens of the cached splits, or reuses them when the cache's key matches.

        The training module calls this on the first process before any loader is built; every process then calls
        `open_feature_cache` with the keys it returns.

        Args:
            encoder: images (B, 3, S, S) -> tokens (B, M, C_enc), frozen, on the device to run on.
            forward_context: the training's precision context (autocast), so tokens match the uncached path's.

        Returns:
            The cache key of each cached split.
        """
        hp = self.hparams
        if hp.get("format", "folder") != "folder":
            raise UserError(f"data.feature_cache reads image files: it needs data.format 'folder', not '{hp.format}'")
        transform = build_transform(hp.encoder, hp.image_size)  # training without augmentation: as evaluation
        config = data_config(hp.encoder, hp.image_size)
        preprocessing = {k: config.get(k) for k in ("input_size", "mean", "std", "interpolation")}
        preprocessing["transform"] = repr(transform)
        keys = {}
        for split in CACHED_SPLITS:
            images = CaptionDataset(self.datasets[split].records, transform)
            keys[split] = cache_key(hp.encoder, encoder, hp.image_size, preprocessing, images.records)
            folder = Path(hp.feature_cache) / split
            self.feature_caches[split] = ensure_cache(
                folder, keys[split], images, encoder, hp.eval_batch_size, hp.num_workers, forward_context
            )
        return keys

    def open_feature_cache(self, keys: dict[str, dict]) -> None:
        """Serves the cached splits from their cache (filled under `keys`) instead of from their images."""
        for split, key in keys.items():
            cache = self.feature_caches.get(split)
            if cache is None or cache.key != key:
                cache = self.feature_caches[split] = FeatureCache(Path(self.hparams.feature_cache) / split, key)
            self.datasets[split] = FeatureDataset(self.datasets[split].records, cache)

    def images_in_split(self, split: str) -> int:
        """Images in a loaded split over all processes: a streamed split's loader holds one process's share."""
        dataset = self.datasets[split]
        if hasattr(dataset, "num_images"):
            return dataset.num_images
        return len(getattr(dataset, "records", dataset))

    def references(self, split: str) -> dict:
        """Reference captions by image id."""
        return {record.image_id: record.captions for record in self.datasets[split].records}

    def training_captions(self) -> list[str] | None:
        """Every training caption (read from the split's files when it is not loaded), or None when the training
        split is not configured or cannot be read; captions that are a training caption verbatim are not novel."""
        train = self.datasets.get("train")
        try:
            records = getattr(train, "records", None) or self.load_records("train")
        except (OSError, ValueError):
            return None
        return [caption for record in records for caption in record.captions]

    def check_captions(self, split: str, captions: dict) -> dict[str, float]:
        """Scores {image_id: caption} against the split's ground truth when the dataset has one (built-in shapes:
        {"grounded_accuracy": ...}); {} for datasets without one."""
        checks = self.caption_checks()
        if checks is None or not captions:
            return {}
        records = self.datasets[split].records if split in self.datasets else self.load_records(split)
        return checks(captions, records)

    def caption_checks(self) -> CaptionChecks | None:
        """The dataset's own checks of captions against its ground truth, as the dataset defines them; None when it
        has no ground truth beyond its captions (all but the built-in shapes)."""
        hp = self.hparams
        if hp.dataset != "shapes":
            return None
        return ShapesCaptionChecks(hp.shapes_level, self.shapes_language, hp.shapes_image_size)

    def train_dataloader(self) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("the datamodule has no tokenizer: setup('fit') trains one from the training captions")
        collate = TrainCollate(self.tokenizer, self.hparams.captions_per_image, self.hparams.max_length)
        self._train_loader = self._loader("train", self.hparams.batch_size, collate, shuffle=True)
        self._restore_train_loader()
        return self._train_loader

    def state_dict(self) -> dict:
        """Where the training epoch stands (saved in every checkpoint), so that a resumed run continues at the next
        batch. Lightning restores it before the first batch is drawn; its own copy, in the fit loop, only reaches a
        loader built after the checkpoint was read, and the LR schedule's length builds the loader before that."""
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if hasattr(loader, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_loader_state = state.get("train_loader")
        self._restore_train_loader()  # when the loader was built before the restore

    def _restore_train_loader(self) -> None:
        """Hands a checkpoint's loader state to the train loader, once both are there."""
        loader = self._train_loader
        if self._train_loader_state is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, _collate_images)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, _collate_images)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, self.hparams.eval_batch_size, _collate_images)

    def _loader(self, split: str, batch_size: int, collate, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        if self.hparams.format == "litdata":  # shuffled and sharded by LitData; its state is saved in checkpoints
            from captioning.data.streaming import streaming_loader

            return streaming_loader(self.datasets[split], batch_size, collate, workers, train=shuffle)
        if shuffle:  # a seeded order per epoch, sharded over processes, that a checkpoint can resume mid-epoch
            dataset = self.datasets[split]
            views = self.views if isinstance(dataset, CaptionDataset) else (0,)
            return ResumableDataLoader(
                dataset,
                ResumableSampler(dataset, views=views, draws=True),
                batch_size=batch_size,
                drop_last=len(dataset) > batch_size,
                num_workers=workers,
                persistent_workers=workers > 0,
                collate_fn=collate,
                pin_memory=torch.cuda.is_available(),
            )
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
        )
