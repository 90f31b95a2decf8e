"""8-bit pixels to the device: the loaders hand over uint8 images (a quarter of float32's bytes), and the encoder
normalises them on the device to exactly what the float transform gives (as `Captioner` and the feature cache use)."""

from __future__ import annotations

import torch

from captioning.data.datamodule import CaptionDataset
from captioning.data.transforms import build_transform
from captioning.model.encoder import ImageEncoder
from tests.conftest import TINY_MODEL, tiny_data


def test_the_loaders_hand_over_8_bit_images_that_encode_as_the_float_ones(shapes_root, one_thread):
    data = tiny_data(shapes_root, augment=False)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 64, 64)
    assert next(iter(data.train_dataloader()))["images"].dtype == torch.uint8
    floats = CaptionDataset(data.datasets["val"].records, build_transform(TINY_MODEL["encoder"], 64))
    expected = torch.stack([floats[i]["image"] for i in range(len(batch["images"]))])  # (B, 3, 64, 64) float
    encoder = ImageEncoder(TINY_MODEL["encoder"], image_size=64).eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch["images"]), encoder(expected), rtol=0, atol=0)
