"""`captioning.images`: the torch-free preprocessing of the ONNX runtime equals the torch transform, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from captioning.images import load_image, preprocess, resize
from tests.conftest import COCO_MINI, require


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_equals_torch_antialiased_uint8_interpolate_down_and_up(mode):
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = rng.integers(3, 200, 2)
        size = tuple(int(s) for s in rng.integers(3, 150, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=size, mode=mode, antialias=True)
        assert np.array_equal(resize(pixels, size, mode), expected[0].permute(1, 2, 0).numpy()), (height, width, size)


@pytest.mark.parametrize("mode", ["lanczos", "nearest", "box"])
def test_other_modes_equal_torchvision_s_resize_of_the_pil_image(mode):
    photo = load_image(require(COCO_MINI / "val2017" / "000000000802.jpg"))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    transform = T.Compose([T.Resize((70, 90), T.InterpolationMode(mode)), T.ToTensor(), T.Normalize(mean, std)])
    assert np.array_equal(preprocess(photo, (70, 90), mean, std, mode), transform(photo).numpy())


def test_the_decompression_bomb_limit_counts_the_pixels_a_jpeg_decodes_to(tmp_path, monkeypatch):
    """A camera JPEG over the limit is read when it is resized (decoded at a DCT scale), refused at full size."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # as a 108 Mpx photo stands to the real limit
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (1600, 1200), (200, 120, 40)).save(path)  # 1.92 Mpx
    assert load_image(path, size=(224, 224)).size == (400, 300)  # decoded at 1/4 scale
    with pytest.raises(OSError, match=r"camera\.jpg: cannot read image \(1920000 pixels .*decompression bomb"):
        load_image(path)
    png = tmp_path / "camera.png"  # other formats decode at full size, resized or not
    Image.new("RGB", (1600, 1200)).save(png)
    with pytest.raises(OSError, match="decompression bomb"):
        load_image(png, size=(224, 224))
