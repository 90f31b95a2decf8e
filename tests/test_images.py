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
