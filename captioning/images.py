"""Images without torch: loading (any mode, EXIF rotation, a decompression-bomb limit, JPEG DCT scaling) and the
model's preprocessing in NumPy, equal to the torch transform's to the last bit, for onnxruntime users without torch.

`resize` is torch's antialiased resize of 8-bit pixels (`F.interpolate(..., antialias=True)` on uint8, the separable
filter of Pillow's resampling with int16 fixed-point weights), written out: Pillow's own resize differs by one level
of 255 on a few pixels in a thousand, and that is enough to change a caption now and then.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

# Pillow's default decompression-bomb limit, stated: an image that would decode to more pixels is refused (a JPEG
# decoded at a DCT scale counts at that scale)
Image.MAX_IMAGE_PIXELS = 89_478_485
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


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
            # Pillow warns between its limit and twice that (and refuses more): the limit is checked below on the
            # pixels that are decoded, so a 108-megapixel camera JPEG that decodes at 1/8 scale is read.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if size is not None:
                    draft(image, size)
                pixels = image.width * image.height
                if pixels > Image.MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(
                        f"{pixels} pixels to decode, more than the limit of {Image.MAX_IMAGE_PIXELS}, which guards "
                        "against decompression bombs; a JPEG this large is read when it is resized"
                    )
                ImageOps.exif_transpose(image, in_place=True)  # no copy: `to_rgb` makes the one that outlives the file
                return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
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


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (torch's and Pillow's antialiased bicubic)."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _linear(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1 - np.abs(x))


FILTERS = {"bicubic": (_cubic, 4), "bilinear": (_linear, 2)}  # the modes torch antialiases on 8-bit pixels


def _weights(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, int]:
    """Dense (out_size, in_size) int16-valued weights of one axis, as float64, and their fixed-point precision."""
    kernel, taps = FILTERS[mode]
    scale = in_size / out_size
    support = taps / 2 * scale if scale >= 1 else taps / 2
    invscale = 1 / scale if scale >= 1 else 1.0
    width = math.ceil(support) * 2 + 1  # the most input pixels one output pixel reads
    dense = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        start = max(int(center - support + 0.5), 0)
        stop = start + min(max(min(int(center + support + 0.5), in_size) - start, 0), width)
        w = kernel((np.arange(start, stop) - center + 0.5) * invscale)
        dense[i, start:stop] = w / w.sum() if w.sum() != 0 else w
    precision = 0  # the most bits that keep the largest weight below 2^15
    while precision < 22 and int(0.5 + dense.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    fixed = dense * (1 << precision)
    return np.where(fixed < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5)), precision


def _resize_axis(pixels: np.ndarray, out_size: int, axis: int, mode: str) -> np.ndarray:
    """uint8 pixels resized along one axis with rounding fixed-point arithmetic (exact in float64 sums)."""
    if pixels.shape[axis] == out_size:
        return pixels
    weights, precision = _weights(pixels.shape[axis], out_size, mode)
    moved = np.moveaxis(pixels, axis, -1).astype(np.float64)  # (..., in)
    sums = moved @ weights.T + (1 << (precision - 1))  # (..., out)
    return np.moveaxis(np.clip(np.floor(sums / (1 << precision)), 0, 255).astype(np.uint8), -1, axis)


def resize(pixels: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W, C) uint8 -> (S_h, S_w, C) uint8 as torch's antialiased `F.interpolate` on uint8: width, then height."""
    return _resize_axis(_resize_axis(pixels, size[1], 1, mode), size[0], 0, mode)


def preprocess(image: Image.Image, size: tuple[int, int], mean, std, interpolation: str) -> np.ndarray:
    """An RGB PIL image -> (3, S_h, S_w) float32, as `captioning.data.transforms.build_transform` makes it."""
    mean, std = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
    if interpolation in FILTERS:  # as ImageTransform: x * (1 / (255 std)) - mean / std, in float32
        pixels = resize(np.asarray(to_rgb(image)), size, interpolation).transpose(2, 0, 1)
        return pixels.astype(np.float32) * (np.float32(1) / (np.float32(255) * std)) - mean / std
    # other modes go through Pillow's resize, as torchvision's Resize does for them, then ToTensor and Normalize
    resized = to_rgb(image).resize((size[1], size[0]), Image.Resampling[interpolation.upper()])
    return (np.asarray(resized).transpose(2, 0, 1).astype(np.float32) / np.float32(255) - mean) / std
