"""Cross-attention made visible: each word's attention on the encoder's grid, shown on the image by dimming where the
word does not look. The image keeps its own colours where it does: a heat map laid over a picture recolours it (jet
turns a yellow triangle green), which misleads for a model whose job is to name colours.

A grid figure with one panel per word, and a GIF that steps through the caption word by word (as the figures of Xu
et al., 2015, "Show, Attend and Tell"). The whole image is resized to the model's square input without cropping, so
a map resized to the image's own height and width lies where it belongs, whatever the aspect ratio. Drawn on
matplotlib's Agg canvas without pyplot (no display needed; a notebook keeps its backend); the GIF by Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator
from PIL import Image
from torch import Tensor

from captioning.data.transforms import load_image
from captioning.errors import UserError
from captioning.files import write_atomic
from captioning.inference import Caption

ImageLike = str | Path | Image.Image | np.ndarray | Tensor
DIM = 0.25  # brightness kept where a word looks no more than an even spread


def word_maps(caption: Caption, layer: int | None = None, head: int | None = None) -> Tensor:
    """The cross-attention of each word on the encoder's grid, for one layer and head or averaged over them.

    Args:
        caption: a Caption made with `return_attention=True`.
        layer: decoder block to show (negative counts from the last); None averages over all blocks.
        head: attention head to show; None averages over all heads.

    Returns:
        (T, H', W'): map t is the attention of the query that wrote word t (raw softmax weights on the grid).
    """
    if caption.cross_attention is None:
        raise UserError("this caption has no attention maps: caption the image with return_attention=True")
    weights = caption.cross_attention  # (L, nh, T, H', W')
    weights = weights.mean(0) if layer is None else weights[layer]  # (nh, T, H', W')
    return weights.mean(0) if head is None else weights[head]  # (T, H', W')


def resize_maps(maps: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes grid maps to an image's (height, width), each as a distribution over its pixels.

    Grid cell (i, j) covers the same share of the image as of the model's square input, so bilinear interpolation
    between cell centres (align_corners=False) puts each weight where its cell lies in the original image.

    Args:
        maps: (T, H', W') or (H', W') non-negative weights.
        size: (height, width) of the image in pixels.

    Returns:
        float32 array (T, height, width) or (height, width), each map summing to 1 (uniform where a map is all zero).
    """
    grid = torch.as_tensor(maps, dtype=torch.float32)
    single = grid.ndim == 2
    grid = grid[None] if single else grid  # (T, H', W')
    resized = F.interpolate(grid[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]  # (T, h, w)
    resized = resized.clamp_min(0)
    total = resized.sum(dim=(-2, -1), keepdim=True)  # (T, 1, 1)
    resized = torch.where(total > 0, resized / total.clamp_min(1e-12), 1.0 / (size[0] * size[1]))
    out = resized.numpy()
    return out[0] if single else out


def box_mask(box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """(height, width) boolean mask of the pixels whose centres lie inside box [x, y, w, h] (image pixels)."""
    x, y, w, h = box
    rows, cols = np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5
    inside_rows = (rows >= y) & (rows <= y + h)
    inside_cols = (cols >= x) & (cols <= x + w)
    return inside_rows[:, None] & inside_cols[None, :]


def share_in_box(attention: np.ndarray, box: Sequence[float]) -> tuple[float, float]:
    """How much of one word's attention falls inside a box, against the box's share of the image.

    Args:
        attention: (height, width) map summing to 1, from `resize_maps`.
        box: [x, y, w, h] in image pixels.

    Returns:
        (attention inside the box, area of the box as a share of the image): attention that ignores the box
        has the first no larger than the second.
    """
    mask = box_mask(box, attention.shape)
    return float(attention[mask].sum()), float(mask.mean())


def _as_image(image: ImageLike) -> Image.Image:
    """A path, PIL image, uint8 array, or (3, H, W), (1, H, W) or (H, W) tensor (uint8, or float in [0, 1]) as RGB."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Tensor):
        pixels = image.detach().cpu()
        pixels = pixels if pixels.dtype == torch.uint8 else (pixels.float().clamp(0, 1) * 255).round().byte()
        pixels = pixels[None] if pixels.ndim == 2 else pixels  # (1 or 3, H, W)
        image = pixels.expand(3, -1, -1).permute(1, 2, 0).numpy()  # (H, W, 3)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB")


def overlay(
    image: np.ndarray,
    attention: np.ndarray,
    dim: float = DIM,
    vmin: float = 0.0,
    vmax: float | None = None,
) -> np.ndarray:
    """Shows where a word looks by dimming the image elsewhere: full brightness and the image's own colours at the
    word's focus, `dim` of its brightness where it does not look.

    Args:
        image: (height, width, 3) uint8.
        attention: (height, width) non-negative map.
        dim: brightness kept where the map is at or below `vmin` (0: black, 1: no dimming at all).
        vmin: values up to this one are dimmed fully (e.g. the value of an even spread).
        vmax: the value shown at full brightness (default: the map's own peak). Give all words of a caption the same
            `vmax` to compare them: a word that looks everywhere then stays dim instead of lighting up all over.

    Returns:
        (height, width, 3) uint8: the image scaled by a brightness between `dim` and 1 (square root of the level, so
        that a mild focus shows), never recoloured.
    """
    peak = attention.max() if vmax is None else vmax
    level = ((attention - vmin) / (peak - vmin)).clip(0, 1) if peak > vmin else np.zeros(attention.shape)  # (h, w)
    brightness = (dim + (1 - dim) * np.sqrt(level))[..., None]  # (h, w, 1)
    return (image.astype(np.float32) * brightness).clip(0, 255).round().astype(np.uint8)


def brightness_scale(dim: float = DIM) -> LinearSegmentedColormap:
    """The colour scale of `overlay`: from `dim` grey (no attention) to white (full attention)."""
    return LinearSegmentedColormap.from_list("brightness", [(dim, dim, dim), (1.0, 1.0, 1.0)])


def _uniform_units(caption: Caption, layer: int | None, head: int | None, size: tuple[int, int]) -> np.ndarray:
    """(T, height, width) maps on the image, as multiples of an even spread: 1 everywhere for a word that looks
    everywhere alike, 10 where it looks ten times harder. Attention on tokens off the grid (a ViT's class token)
    is left out: each map shows how a word shares out the attention that it gives to the picture's grid."""
    if not caption.words:
        return np.zeros((0, *size), dtype=np.float32)
    return resize_maps(word_maps(caption, layer, head), size) * (size[0] * size[1])


def _display_image(image: Image.Image, max_side: int, min_side: int) -> Image.Image:
    """The image scaled (aspect ratio kept) so that its long side is at most `max_side` and at least `min_side`."""
    scale = min(max_side / max(image.size), max(1.0, min_side / max(image.size)))
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def attention_figure(
    image: ImageLike,
    caption: Caption,
    *,
    layer: int | None = None,
    head: int | None = None,
    columns: int = 4,
    panel_inches: float = 2.6,
    dim: float = DIM,
    shared_scale: bool = True,
    max_side: int = 512,
) -> Figure:
    """A grid: the image with its caption, then one panel per word with that word's cross-attention over it.

    Args:
        image: the image that was captioned, in its original size and aspect ratio (path, PIL image or array).
        caption: its Caption, made with `return_attention=True`.
        layer, head: which attention to show (see `word_maps`); default the average over all.
        columns: panels per row.
        panel_inches: width of a panel in inches (the height follows the image's aspect ratio).
        dim: brightness kept where a word does not look (see `overlay`).
        shared_scale: draw all words on one colour scale (default), so that their maps compare; False scales
            each map to its own peak, which shows where even a diffuse word looks most.
        max_side: the image is drawn at most this many pixels on its long side (larger photos are scaled down).

    Returns:
        The matplotlib Figure (not registered with pyplot: save it with `fig.savefig(path)`, or show it in a notebook).
    """
    picture = _display_image(_as_image(image), max_side, min_side=1)
    pixels = np.asarray(picture)  # (h, w, 3)
    maps = _uniform_units(caption, layer, head, pixels.shape[:2])  # (T, h, w)
    vmax = float(maps.max()) if shared_scale and len(maps) else None  # all words on one scale
    panels = 1 + len(caption.words)
    columns = max(1, min(columns, panels))
    rows = -(-panels // columns)
    aspect = pixels.shape[0] / pixels.shape[1]
    figure = Figure(figsize=(columns * panel_inches, rows * (panel_inches * aspect + 0.45)), layout="constrained")
    FigureCanvasAgg(figure)  # draws without pyplot: no display, and a notebook keeps its own backend
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(pixels)
    axes[0].set_title("image", fontsize=10)
    for ax, word, attention in zip(axes[1:], caption.words, maps, strict=False):
        ax.imshow(overlay(pixels, attention, dim, 1.0, vmax))
        ax.set_title(word, fontsize=12, fontweight="bold")
    for ax in axes:
        ax.set_axis_off()
    if vmax and vmax > 1:
        scale = ScalarMappable(PowerNorm(0.5, 1.0, vmax), brightness_scale(dim))  # overlay's square-root levels
        bar = figure.colorbar(scale, ax=axes.tolist(), location="bottom", shrink=0.4, aspect=40, pad=0.01)
        bar.set_label("brightness kept: attention per pixel, as a multiple of an even spread", fontsize=9)
        bar.ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))  # a narrow bar: few ticks, never touching
        bar.ax.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
        bar.ax.xaxis.set_minor_locator(NullLocator())
    which = f"{'all layers' if layer is None else f'layer {layer}'}, {'all heads' if head is None else f'head {head}'}"
    figure.suptitle(f"{caption.text or '(empty caption)'}\ncross-attention of each word ({which})", fontsize=11)
    return figure


def attention_frames(
    image: ImageLike,
    caption: Caption,
    *,
    layer: int | None = None,
    head: int | None = None,
    dim: float = DIM,
    shared_scale: bool = True,
    max_side: int = 384,
    min_side: int = 256,
) -> list[Image.Image]:
    """The frames of the word-by-word animation: the image with one word's attention, that word written under it.

    Under the image the current word is written large, with the caption so far in small type beneath it. Small
    images are scaled up to `min_side` pixels on their long side so that the words stay legible. The other
    arguments are those of `attention_figure`.

    Returns:
        One RGB frame per word (the plain image with "(empty caption)" when there are no words), all of one size.
    """
    picture = _display_image(_as_image(image), max_side, min_side)
    pixels = np.asarray(picture)  # (h, w, 3)
    h, w = pixels.shape[:2]
    dpi, strip = 100, 64  # pixels of text under the image
    maps = _uniform_units(caption, layer, head, (h, w)) if caption.words else [None]  # (T, h, w)
    vmax = float(np.max(maps)) if shared_scale and caption.words else None
    words = caption.words or [""]
    figure = Figure(figsize=(w / dpi, (h + strip) / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_axes((0, strip / (h + strip), 1, h / (h + strip)))
    ax.set_axis_off()
    shown = ax.imshow(pixels)
    current = figure.text(0.5, (strip - 22) / (h + strip), "", ha="center", va="center", fontsize=17, weight="bold")
    so_far = figure.text(0.5, 12 / (h + strip), "", ha="center", va="center", fontsize=9, color="0.35")
    frames = []
    for t, (word, attention) in enumerate(zip(words, maps, strict=True)):
        shown.set_data(pixels if attention is None else overlay(pixels, attention, dim, 1.0, vmax))
        current.set_text(word or "(empty caption)")
        so_far.set_text(_fit(" ".join(words[: t + 1]), w))
        canvas.draw()
        frames.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy()))
    return frames


def _fit(text: str, width_pixels: int) -> str:
    """The end of `text`, cut at the front so that it fits in about `width_pixels` at 9 points."""
    room = max(8, int(width_pixels / 7.5))  # DejaVu Sans at 9 points and 100 dpi: about 7 pixels a character
    return text if len(text) <= room else "…" + text[-(room - 1) :]


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 900) -> Path:
    """Writes RGB frames as a looping GIF.

    One palette, taken from all frames together, keeps the image's colours steady from frame to frame and still
    holds every colour of the heat maps.
    """
    width, height = frames[0].size
    every = Image.new("RGB", (width, height * len(frames)))  # all frames stacked: one palette for them all
    for index, frame in enumerate(frames):
        every.paste(frame.convert("RGB"), (0, index * height))
    palette = every.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    quantized = [frame.convert("RGB").quantize(palette=palette) for frame in frames]
    options = dict(format="GIF", save_all=True, append_images=quantized[1:], duration=duration_ms, loop=0)
    return write_atomic(Path(path), lambda file: quantized[0].save(file, **options))


def save_attention(
    image: ImageLike,
    caption: Caption,
    folder: str | Path,
    name: str,
    *,
    layer: int | None = None,
    head: int | None = None,
) -> tuple[Path, Path]:
    """Writes `folder/name.png` (the per-word grid) and `folder/name.gif` (the word-by-word animation).

    Returns:
        The paths of the PNG and the GIF.
    """
    folder = Path(folder)
    picture = _as_image(image)
    figure = attention_figure(picture, caption, layer=layer, head=head)
    png = write_atomic(folder / f"{name}.png", lambda file: figure.savefig(file, format="png", dpi=100))
    gif = save_gif(attention_frames(picture, caption, layer=layer, head=head), folder / f"{name}.gif")
    return png, gif
