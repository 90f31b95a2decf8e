"""Image loading and preprocessing, taken from the timm model's data config (mean, std, interpolation, size).

Images are resized to the model's square input without cropping: a caption may name anything in the picture, and
attention maps then cover the whole image, whatever its aspect ratio. Training can add a mild random crop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import timm
from PIL import Image, ImageOps
from timm.data import resolve_data_config
from torchvision import transforms as T

from captioning.model.encoder import check_model_name

Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit, stated: larger images are refused


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


def build_transform(encoder: str, image_size: int | None = None, train: bool = False, augment: bool = False):
    """PIL image -> normalised tensor (3, S, S) for the timm model `encoder`."""
    config = data_config(encoder, image_size)
    size = config["input_size"][-2:]
    interpolation = T.InterpolationMode(config.get("interpolation", "bicubic"))
    if train and augment:  # no flips: they would swap "left" and "right" in the captions
        resize = T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interpolation, antialias=True)
    else:
        resize = T.Resize(size, interpolation=interpolation, antialias=True)
    return T.Compose([resize, T.ToTensor(), T.Normalize(config["mean"], config["std"])])


def load_image(path: str | Path) -> Image.Image:
    """Opens an image as upright RGB; raises OSError naming the file if it is unreadable or too large."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; an image over the limit is refused outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise OSError(f"{path}: cannot read image ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, palette, RGBA, CMYK, 16-bit) as 8-bit RGB; transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
