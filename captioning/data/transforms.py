"""Image loading and preprocessing, taken from the timm model's data config (mean, std, interpolation, size).

Images are resized to the model's square input without cropping: a caption may name anything in the picture, and
attention maps then cover the whole image, whatever its aspect ratio. Training can add a mild random crop.

Speed: a JPEG can be decoded at the size the transform needs (`load_image(path, size=transform.decode_size)`), with
libjpeg's DCT scaling through Pillow's `draft`; the transform then resizes once, on 8-bit pixels in torch (the
antialiased resampling of PIL, within one level of 255), and normalises in the same pass as the float conversion.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import resolve_data_config
from torch import Tensor
from torchvision import transforms as T

from captioning.timm_names import check_model_name

Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit, stated: larger images are refused
CROP_SCALE = (0.6, 1.0)  # training crops keep most of the picture: a caption may name anything in it
CROP_RATIO = (3 / 4, 4 / 3)
TORCH_MODES = ("bilinear", "bicubic")  # resampling that torch antialiases on 8-bit pixels
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


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
    """RGB PIL image -> normalised tensor (3, S, S), resized on 8-bit pixels in torch; training may crop first.

    Attributes:
        size: (S, S), the output height and width.
        decode_size: (width, height), the smallest image this transform needs, for `load_image(path, size=...)`.
            A training crop (60% of the area or more) may then be enlarged a little; without crops, nothing is.
    """

    def __init__(self, size: tuple[int, int], mean, std, interpolation: str, crop: bool = False) -> None:
        self.size = tuple(size)
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
        return resized[0].float().mul_(self.scale).sub_(self.shift)  # (3, S, S)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mode={self.mode}, crop={self.crop})"


def build_transform(encoder: str, image_size: int | None = None, train: bool = False, augment: bool = False):
    """PIL image -> normalised tensor (3, S, S) for the timm model `encoder`; see `ImageTransform`."""
    config = data_config(encoder, image_size)
    size = config["input_size"][-2:]
    interpolation = config.get("interpolation", "bicubic")
    crop = train and augment  # no flips: they would swap "left" and "right" in the captions
    if interpolation in TORCH_MODES:
        return ImageTransform(size, config["mean"], config["std"], interpolation, crop)
    mode = T.InterpolationMode(interpolation)  # e.g. lanczos: PIL's own resampling
    if crop:
        resize = T.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=mode, antialias=True)
    else:
        resize = T.Resize(size, interpolation=mode, antialias=True)
    return T.Compose([resize, T.ToTensor(), T.Normalize(config["mean"], config["std"])])


def load_image(
    path: str | Path | bytes | IO[bytes], size: int | tuple[int, int] | None = None, name: str | None = None
) -> Image.Image:
    """Opens an image as upright RGB; raises OSError naming the file if it is unreadable or too large.

    Args:
        path: the image file, or the encoded image itself (bytes, e.g. a Parquet row's, or an open binary file).
        size: (width, height) the caller resizes the image to next, e.g. `transform.decode_size`. A JPEG is then
            decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers it in both directions, after its EXIF
            rotation. None, and any other format, decode at full size.
        name: what error messages call the image; default: the path, or "an image of N bytes" for bytes.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        name = name or f"an image of {len(path)} bytes"
        path = io.BytesIO(path)
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; an image over the limit is refused outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if size is not None:
                    draft(image, size)
                ImageOps.exif_transpose(image, in_place=True)  # no copy: `to_rgb` makes the one that outlives the file
                return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise OSError(f"{name}: cannot read image ({error})") from None


def draft(image: Image.Image, size: int | tuple[int, int]) -> None:
    """Asks the decoder of an opened, not yet loaded, image for the smallest scale that still covers `size` (width,
    height) once upright. Only JPEG has such scales (libjpeg's DCT scaling); for other formats this does nothing."""
    width, height = (size, size) if isinstance(size, int) else size
    if image.getexif().get(0x0112, 1) in ROTATED:  # stored on its side: the stored width becomes the height
        width, height = height, width
    image.draft(image.mode, (width, height))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, palette, RGBA, CMYK, 16-bit) as 8-bit RGB; transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
