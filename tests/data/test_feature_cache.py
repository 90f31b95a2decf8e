"""The frozen-encoder feature cache: filled once, reused while its key holds, rebuilt when it changes, and training
from it starts at the same loss as training from the images."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from captioning.data.coco import ImageRecord
from captioning.data.datamodule import CaptionDataModule, CaptionDataset
from captioning.data.feature_cache import cache_key, ensure_cache, weights_digest
from captioning.data.transforms import build_transform
from captioning.model.encoder import ImageEncoder
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, TINY_SPLITS, run_cli, tiny_args, tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")


def cached_data(shapes_root, cache=None, image_size=64, encoder=TINY_MODEL["encoder"]) -> CaptionDataModule:
    # no flips: the cache holds the tokens of the images as they are, and the losses must see the same images
    cache = str(cache) if cache else None
    return tiny_data(shapes_root, image_size=image_size, feature_cache=cache, flip=False, encoder=encoder)


def datamodule(shapes_root, cache=None, image_size=64) -> CaptionDataModule:
    """The tiny shapes data, set up for fit as Lightning would."""
    data = cached_data(shapes_root, cache, image_size)
    data.prepare_data()
    data.setup("fit")
    return data


def frozen_encoder(image_size=64, seed=0, output_stride=None, encoder=TINY_MODEL["encoder"]) -> ImageEncoder:
    torch.manual_seed(seed)
    return ImageEncoder(encoder, freeze=True, image_size=image_size, output_stride=output_stride)


class FirstLoss(L.Callback):
    """The loss of the first training step, and what the batch carried to the model."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.loss, self.inputs = outputs["loss"].item(), "features" if "features" in batch else "images"


def first_loss(shapes_root, cache=None, encoder=TINY_MODEL["encoder"]) -> tuple[FirstLoss, L.Trainer]:
    """One training step of a fresh, seeded run, from the images or from the cache in `cache`."""
    L.seed_everything(0, verbose=False)
    data = cached_data(shapes_root, cache, encoder=encoder)
    module = CaptioningModule(**{**TINY_MODEL, "encoder": encoder}, freeze_encoder=True, warmup_steps=1)
    first = FirstLoss()
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[first], accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, data)
    return first, trainer


def test_a_resumed_run_trains_on_the_tokens_of_its_checkpoints_encoder(shapes_root, tmp_path):
    _, first = first_loss(shapes_root, tmp_path / "cache")
    checkpoint = tmp_path / "first.ckpt"
    first.save_checkpoint(checkpoint)
    L.seed_everything(1, verbose=False)  # another seed: the resumed run's fresh encoder differs from the checkpoint's
    data = cached_data(shapes_root, tmp_path / "cache")
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(CaptioningModule(**TINY_MODEL, freeze_encoder=True, warmup_steps=1), data, ckpt_path=checkpoint)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    encoder = frozen_encoder()
    encoder.load_state_dict({k.removeprefix("model.encoder."): v for k, v in state.items() if "model.encoder." in k})
    assert data.feature_caches["train"].key["weights_sha256"] == weights_digest(encoder)
    assert data.feature_caches["train"].fill_seconds is None  # the first run's cache, not filled for the fresh encoder
    assert "features" in data.datasets["train"][0]


@pytest.mark.parametrize("encoder", ["test_convnext", "test_resnet"])  # LayerNorm and BatchNorm trunks
def test_step_zero_loss_from_the_cache_equals_the_loss_from_the_images(shapes_root, tmp_path, encoder):
    from_images, _ = first_loss(shapes_root, encoder=encoder)
    from_cache, _ = first_loss(shapes_root, tmp_path / "cache", encoder=encoder)
    assert (from_images.inputs, from_cache.inputs) == ("images", "features")
    # Same seed, same batch, same weights; the tokens differ only by float16 rounding (relative 2**-11 at most).
    assert from_cache.loss == pytest.approx(from_images.loss, rel=1e-4)


def test_the_cache_holds_the_encoders_tokens_and_a_second_run_reuses_it(shapes_root, tmp_path):
    encoder = frozen_encoder()
    first = datamodule(shapes_root, tmp_path)
    keys = first.fill_feature_cache(encoder)
    features = tmp_path / "train" / "features.npy"
    written = features.stat().st_mtime_ns
    assert first.feature_caches["train"].fill_seconds is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # the temporary folder was renamed into place

    first.open_feature_cache(keys)
    item = first.datasets["train"][3]
    record = first.datasets["train"].records[3]
    transform = build_transform(TINY_MODEL["encoder"], 64)
    images = CaptionDataset([record], transform)
    with torch.no_grad():
        expected = encoder.eval()(images[0]["image"][None])[0]  # (M, C_enc)
    assert item["features"].dtype == torch.float16 and item["features"].shape == expected.shape
    torch.testing.assert_close(item["features"].float(), expected, rtol=1e-3, atol=1e-3)
    assert (item["image_id"], item["captions"]) == (record.image_id, record.captions)

    second = datamodule(shapes_root, tmp_path)
    assert second.fill_feature_cache(frozen_encoder()) == keys  # the same seed: the same weights
    assert second.feature_caches["train"].fill_seconds is None
    assert features.stat().st_mtime_ns == written


def test_a_cache_refilled_by_another_run_before_it_is_read_is_refused(shapes_root, tmp_path):
    first = datamodule(shapes_root, tmp_path)
    first.open_feature_cache(first.fill_feature_cache(frozen_encoder()))
    # Another run with another encoder fills the same folder before this run's loader reads a row.
    datamodule(shapes_root, tmp_path).fill_feature_cache(frozen_encoder(seed=1))
    with pytest.raises(ValueError, match=r"feature cache .*train does not match this run \(differs in: weights_sha256"):
        first.datasets["train"][0]


@pytest.mark.parametrize("change", ["encoder weights", "output stride", "image size"])
def test_the_cache_is_rebuilt_when_its_key_changes(shapes_root, tmp_path, change):
    datamodule(shapes_root, tmp_path).fill_feature_cache(frozen_encoder())
    if change == "encoder weights":
        data, encoder = datamodule(shapes_root, tmp_path), frozen_encoder(seed=1)
    elif change == "output stride":  # the same weights, a 4x4 grid instead of 2x2
        data, encoder = datamodule(shapes_root, tmp_path), frozen_encoder(output_stride=16)
    else:
        data, encoder = datamodule(shapes_root, tmp_path, image_size=32), frozen_encoder(image_size=32)
    keys = data.fill_feature_cache(encoder)
    assert data.feature_caches["train"].fill_seconds is not None
    data.open_feature_cache(keys)
    tokens = encoder.num_tokens
    assert data.datasets["train"][0]["features"].shape == (tokens, encoder.feature_dim)
    assert np.load(tmp_path / "train" / "features.npy", mmap_mode="r").shape[:2] == (TINY_SPLITS["train"], tokens)


def test_an_unreadable_image_gets_no_row_and_is_skipped_like_an_image(shapes_root, tmp_path):
    paths = sorted((shapes_root / "train").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:50])
    records = [ImageRecord(i, path, [f"caption {i}"]) for i, path in enumerate([paths[1], broken, paths[2]])]
    images = CaptionDataset(records, build_transform(TINY_MODEL["encoder"], 64))
    encoder = frozen_encoder()
    key = cache_key(TINY_MODEL["encoder"], encoder, 64, {}, records)
    with pytest.warns(UserWarning, match="broken.png"):
        cache = ensure_cache(tmp_path / "cache", key, images, encoder, batch_size=2)
    assert cache.get(1) is None and cache.get(0) is not None and cache.get(2) is not None


def test_the_cache_is_refused_with_augmentation_or_a_trainable_encoder(shapes_root, tmp_path):
    with pytest.raises(ValueError, match="data.feature_cache needs data.augment false"):
        CaptionDataModule(feature_cache=str(tmp_path), augment=True)
    data = datamodule(shapes_root, tmp_path)
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ValueError, match="data.feature_cache needs model.freeze_encoder true"):
        trainer.fit(CaptioningModule(**TINY_MODEL, freeze_encoder=False), data)
    assert not (tmp_path / "train").exists()


@pytest.mark.slow
def test_fit_from_the_cache_through_the_cli_writes_a_checkpoint_that_captions_images(shapes_root, tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    extra = ["--data.feature_cache", str(cache), "--model.freeze_encoder", "true", "--trainer.max_epochs=1"]
    extra += ["--model.encoder=test_resnet"]  # the shapes config's own BatchNorm trunk, as users run it
    result = run_cli(*tiny_args("fit", shapes_root, run_dir, *extra, "--test_after_fit=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (cache / "train" / "key.json").is_file()
    (version,) = (run_dir / "shapes").iterdir()
    checkpoint = version / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert any(name.startswith("model.encoder.trunk.") for name in state)  # the whole model, to caption images

    images = sorted((shapes_root / "test").glob("*.png"))[:2]
    result = run_cli("caption", "--checkpoint", str(checkpoint), *map(str, images))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, images))
    assert all(line.split("\t")[1].strip() for line in lines)


def test_a_frozen_batchnorm_trunk_keeps_its_statistics_through_training(shapes_root):
    _, trainer = first_loss(shapes_root, encoder="test_resnet")  # Lightning sets each submodule's mode itself
    trunk = trainer.lightning_module.model.encoder.trunk
    assert not trunk.training
    statistics = {k: v for k, v in trunk.state_dict().items() if "running" in k or "num_batches" in k}
    fresh = frozen_encoder(encoder="test_resnet").trunk.state_dict()
    assert statistics and all(torch.equal(value, fresh[key]) for key, value in statistics.items())
