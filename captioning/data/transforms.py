"""Image loading and preprocessing, taken from the timm model's data config (mean, std, interpolation, size).

Images are resized to the model's square input without cropping: a caption may name anything in the picture, and
attention maps then cover the whole image, whatever its aspect ratio. Training can add a mild random crop.

Speed: a JPEG can be decoded at the size the transform needs (`load_image(path, size=transform.decode_size)`), with
libjpeg's DCT scaling through Pillow's `draft`; the transform then resizes once, on 8-bit pixels in torch (the
antialiased resampling of PIL, within one level of 255), and normalises in the same pass as the float conversion.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import resolve_data_config
from torch import Tensor
from torchvision import transforms as T

from captioning.images import draft, load_image, to_rgb  # noqa: F401  (here since before they moved, torch-free)
from captioning.seeds import seeded_torch
from captioning.timm_names import check_model_name

CROP_SCALE = (0.6, 1.0)  # training crops keep most of the picture: a caption may name anything in it
CROP_RATIO = (3 / 4, 4 / 3)
TORCH_MODES = ("bilinear", "bicubic")  # resampling that torch antialiases on 8-bit pixels


def data_config(encoder: str, image_size: int | None = None) -> dict:
    """timm's data config of a model name (no weights needed), with `image_size` overriding its input size."""
    check_model_name(encoder)
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(encoder)
    except RuntimeError:  # an unknown weight tag: timm's ImageNet defaults
        pretrained_cfg = None
    config = resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {"num_classes": 0})
    if image_size:
        config["input_size"] = (3, image_size, image_size)
    return config


class ImageTransform:
    """RGB PIL image -> normalised tensor (3, S, S), resized on 8-bit pixels in torch; training may crop first. With
    `uint8`, the resized 8-bit pixels themselves: a quarter of the bytes to the device, where the encoder normalises.

    Attributes:
        size: (S, S), the output height and width.
        decode_size: (width, height), the smallest image this transform needs, for `load_image(path, size=...)`.
            A training crop (60% of the area or more) may then be enlarged a little; without crops, nothing is.
    """

    def __init__(
        self, size: tuple[int, int], mean, std, interpolation: str, crop: bool = False, uint8: bool = False
    ) -> None:
        self.size = tuple(size)
        self.uint8 = uint8
        self.decode_size = (self.size[1], self.size[0])
        self.mode = interpolation
        self.crop = crop
        std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1 / (255 * std)  # (x / 255 - mean) / std = x * scale - shift
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std

    def __call__(self, image: Image.Image) -> Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W) uint8, channels last
        if self.crop:
            top, left, height, width = T.RandomResizedCrop.get_params(pixels, CROP_SCALE, CROP_RATIO)
            pixels = pixels[:, top : top + height, left : left + width]
        resized = F.interpolate(pixels[None], size=self.size, mode=self.mode, antialias=True, align_corners=False)
        if self.uint8:
            return resized[0].contiguous()  # (3, S, S) uint8
        return resized[0].float().mul_(self.scale).sub_(self.shift)  # (3, S, S)

    def __repr__(self) -> str:
        uint8 = ", uint8=True" if self.uint8 else ""  # the float output keeps its repr (feature cache keys)
        return f"ImageTransform(size={self.size}, mode={self.mode}, crop={self.crop}{uint8})"


def apply_transform(transform, image: Image.Image, seed: int | None) -> Tensor:
    """`transform(image)`, with its random draws (a training crop) from torch's generator seeded by `seed` (see
    `captioning.seeds`). A transform without a crop runs unseeded: seeding costs about a tenth of a small image's
    loading. torchvision's own pipelines are taken to draw."""
    with seeded_torch(seed if getattr(transform, "crop", True) else None):
        return transform(image)


def build_transform(
    encoder: str, image_size: int | None = None, train: bool = False, augment: bool = False, uint8: bool = False
):
    """PIL image -> normalised tensor (3, S, S) for the timm model `encoder`; see `ImageTransform`. With `uint8`, the
    8-bit pixels (3, S, S) instead, which `ImageEncoder` normalises with the same mean and std on the device."""
    config = data_config(encoder, image_size)
    size = config["input_size"][-2:]
    interpolation = config.get("interpolation", "bicubic")
    crop = train and augment  # no flips: they would swap "left" and "right" in the captions
    if interpolation in TORCH_MODES:
        return ImageTransform(size, config["mean"], config["std"], interpolation, crop, uint8)
    mode = T.InterpolationMode(interpolation)  # e.g. lanczos: PIL's own resampling
    if crop:
        resize = T.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=mode, antialias=True)
    else:
        resize = T.Resize(size, interpolation=mode, antialias=True)
    if uint8:
        return T.Compose([resize, T.PILToTensor()])
    return T.Compose([resize, T.ToTensor(), T.Normalize(config["mean"], config["std"])])
