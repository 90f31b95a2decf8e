"""Fast decoding: JPEGs decoded at the size the transform needs (DCT scaling) and one resize on 8-bit pixels."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from captioning import timm_names
from captioning.data import transforms
from captioning.data.transforms import build_transform, data_config, load_image
from tests.conftest import COCO_MINI, require
from tests.helpers import broken_images, odd_images

ENCODER = "vit_small_patch16_224"


def old_transform(size: int) -> T.Compose:
    """The pipeline before fast decoding: PIL resize, ToTensor, Normalize."""
    config = data_config(ENCODER, size)
    resize = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    return T.Compose([resize, T.ToTensor(), T.Normalize(config["mean"], config["std"])])


def test_draft_decoded_photos_stay_close_to_the_full_decode(one_thread):
    photos = sorted(require(COCO_MINI / "val2017").glob("*.jpg"))[:12]
    new, old = build_transform(ENCODER, 224), old_transform(224)
    smaller, differences = 0, []
    for path in photos:
        drafted, full = load_image(path, size=new.decode_size), load_image(path)
        assert drafted.mode == "RGB" and drafted.width >= 224 and drafted.height >= 224  # never below the input size
        smaller += drafted.size != full.size
        differences.append((new(drafted) - old(full)).abs().mean().item())
    # In normalised units (std 0.5), one level of 255 is 0.008: about one level on average, a few on fine textures.
    assert max(differences) < 0.06 and sum(differences) / len(differences) < 0.02, differences
    assert smaller >= 3  # 640 x 480 photos decode at half size


def test_rotated_jpeg_is_drafted_upright_at_the_size_asked_for(tmp_path):
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: upright it is 480 wide and 640 tall
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif)
    full = load_image(path)
    drafted = load_image(path, size=(224, 300))  # (width, height) upright
    assert full.size == (480, 640)
    assert drafted.size == (240, 320)  # half scale covers 224 x 300 only if the stored sides are swapped
    reference = np.asarray(full.resize(drafted.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(drafted, dtype=float) - reference).mean() < 40  # noise photo: same pixels, not turned


def test_every_kind_of_image_loads_as_rgb_and_non_jpegs_decode_exactly_as_before(tmp_path):
    paths = odd_images(tmp_path)
    for name, path in paths.items():
        drafted, full = load_image(path, size=(16, 16)), load_image(path)
        assert drafted.mode == "RGB", name
        if path.suffix != ".jpg":
            assert drafted.size == full.size and drafted.tobytes() == full.tobytes(), name
        else:
            assert drafted.width >= min(16, full.width) and drafted.height >= min(16, full.height), name
    assert load_image(paths["huge.jpg"], size=(16, 16)).size == (750, 500)  # 1/8, libjpeg's smallest scale
    assert load_image(paths["exif-rotated.jpg"], size=(16, 16)).size == (24, 32)  # half of 48 x 64, still upright


def test_unreadable_images_are_refused_with_their_name_whatever_the_size(tmp_path):
    for name, path in broken_images(tmp_path).items():
        with pytest.raises(OSError, match=name):
            load_image(path, size=(224, 224))


def test_transform_matches_pil_resampling_within_a_level_and_crops_to_the_input_size(one_thread):
    photo = sorted(require(COCO_MINI / "val2017").glob("*.jpg"))[0]
    image = load_image(photo)
    new, old = build_transform(ENCODER, 224), old_transform(224)
    assert new(image).shape == (3, 224, 224) and new(image).dtype == torch.float32
    assert (new(image) - old(image)).abs().max().item() <= 2.5 * 2 / 255  # 8-bit rounding either side
    torch.manual_seed(0)
    crops = build_transform(ENCODER, 224, train=True, augment=True)
    first, second = crops(image), crops(image)
    assert first.shape == (3, 224, 224) and not torch.equal(first, second)  # a random crop each time


def test_preprocessing_does_not_import_the_model():
    """data/ never imports model/: the timm name check lives in a module that both use."""
    for module in (transforms, timm_names):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {name for name in imported if name.startswith("captioning.model")}, module.__name__
