"""Attention figures and animations: geometry on any aspect ratio, both trunk kinds, and a trained model that looks
where its words point (a colour word's attention falls on the shape it names), through the Python API and through
`captioning caption --attention-dir`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from captioning.checkpoint import checkpoint_metadata
from captioning.data.coco import load_coco_captions
from captioning.data.shapes import COLOURS, KINDS, annotation_path, ensure_shapes
from captioning.inference import Caption, Captioner
from captioning.model import CaptioningModel, ModelConfig
from captioning.text.tokenizer import CaptionTokenizer
from captioning.viz import (
    attention_figure,
    attention_frames,
    box_mask,
    overlay,
    resize_maps,
    save_attention,
    share_in_box,
    word_maps,
)
from tests.conftest import COCO_MINI, QUICK_METRICS, ROOT

# A ViT trunk at 96 px (a 6 x 6 patch grid and a class token) learns within 300 steps to look at the shape that a
# colour word names. CNN trunks learn it too (test_resnet at 96 px: 95% of colour words after 500 steps), but train
# three times slower on two CPU cores. 1,600 training images in batches of 32: 50 steps an epoch.
VIZ_MODEL = {"encoder": "test_vit", "image_size": 96, "dim": 64, "depth": 2, "num_heads": 2, "warmup_steps": 30}
VIZ_SPLITS = {"train": 1600, "val": 50, "test": 100}


@functools.cache
def train_viz_runs(folder: Path) -> tuple[Path, Path]:
    """Fits the viz model on shapes through the CLI, as a user would, in two runs of one training.

    The first run trains 200 steps; a copy of it (version_1) is resumed from its last checkpoint up to step 300. Both
    are real run folders (curves, config, predictions and metrics of the same test split), so the results notebook
    can compare them. Cached: every test module of the session gets the same runs.

    Returns:
        The run folders (version_0: 200 steps, version_1: 300 steps).
    """
    root, logs = folder / "shapes", folder / "runs"
    ensure_shapes(root, image_size=VIZ_MODEL["image_size"], split_sizes=VIZ_SPLITS)
    common = [
        "fit",
        "--config",
        str(ROOT / "configs" / "shapes.yaml"),
        *[f"--model.{key}={value}" for key, value in VIZ_MODEL.items()],
        f"--data.root={root}",
        f"--data.shapes_split_sizes={json.dumps(VIZ_SPLITS)}",
        f"--data.shapes_image_size={VIZ_MODEL['image_size']}",
        "--data.num_workers=0",
        "--trainer.log_every_n_steps=10",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        QUICK_METRICS,  # these runs are about pictures: no METEOR JVM
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    first, second = logs / "shapes" / "version_0", logs / "shapes" / "version_1"
    resume = f"--ckpt_path={second / 'checkpoints' / 'last.ckpt'}"  # a resumed run goes on in its own folder
    for args in (["--trainer.max_epochs=4"], ["--trainer.max_epochs=6", resume]):  # 200 steps, then on to 300
        if args[-1] == resume:
            shutil.copytree(first, second)
        result = subprocess.run(
            [sys.executable, "-m", "captioning", *common, *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return first, second


pytestmark = pytest.mark.usefixtures("one_thread")


def one_hot_caption(words: list[str], cells: list[tuple[int, int]], grid: tuple[int, int] = (4, 4)) -> Caption:
    """A Caption whose word t puts all of its attention, in every layer and head, on grid cell cells[t]."""
    weights = torch.zeros(2, 2, len(words), *grid)  # (L, nh, T, H', W')
    for t, (row, column) in enumerate(cells):
        weights[:, :, t, row, column] = 1.0
    return Caption(" ".join(words), list(range(len(words))), -1.0, words, weights, torch.zeros(2, 2, len(words), 0))


def heat_centre(image: np.ndarray, shown: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of the pixels that the overlay kept brighter than its dimmest, weighted by how much."""
    kept = shown.astype(float).sum(-1) / np.maximum(image.astype(float).sum(-1), 1)  # (h, w) brightness kept
    lit = kept - kept.min()
    ys, xs = np.indices(lit.shape)
    return float((xs * lit).sum() / lit.sum()), float((ys * lit).sum() / lit.sum())


def test_the_overlay_keeps_the_colours_of_what_the_word_looks_at():
    """Where a word looks the pixels are the image's own; elsewhere only darker, never another hue."""
    yellow = np.zeros((40, 40, 3), dtype=np.uint8)
    yellow[...] = (230, 200, 20)
    attention = np.ones((40, 40))
    attention[10:20, 10:20] = 50.0  # the word looks here
    shown = overlay(yellow, attention, vmin=1.0).astype(int)
    np.testing.assert_array_equal(shown[10:20, 10:20], yellow[10:20, 10:20])  # the focus: untouched
    dimmed = shown[30:, 30:].reshape(-1, 3)
    assert (dimmed < yellow[0, 0]).all()  # elsewhere darker,
    hue = np.broadcast_to(yellow[0, 0] / yellow[0, 0, 0], dimmed.shape)
    np.testing.assert_allclose(dimmed / dimmed[:, :1], hue, atol=0.02)  # the same hue


@pytest.mark.parametrize("size", [(300, 100), (100, 300), (64, 64), (1000, 17)])
def test_a_grid_cell_lands_where_it_lies_in_an_image_of_any_aspect_ratio(size):
    """The model sees the whole image squeezed into a square, so cell (i, j) of an H' x W' grid covers the same
    share of the image: its centre is at ((j + 0.5) / W', (i + 0.5) / H') of the width and height."""
    width, height = size
    caption = one_hot_caption(["red", "circle"], [(1, 3), (2, 0)])
    maps = resize_maps(word_maps(caption), (height, width))  # (T, height, width)
    assert maps.shape == (2, height, width)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for attention, (row, column) in zip(maps, [(1, 3), (2, 0)], strict=True):
        peak_y, peak_x = np.unravel_index(attention.argmax(), attention.shape)
        assert abs(peak_x + 0.5 - (column + 0.5) * width / 4) <= max(1.0, width / 8)
        assert abs(peak_y + 0.5 - (row + 0.5) * height / 4) <= max(1.0, height / 8)
        cell = [column * width / 4, row * height / 4, width / 4, height / 4]  # [x, y, w, h]
        inside, area = share_in_box(attention, cell)
        assert inside > 2 * area  # the cell holds more than twice its share of the image


def test_an_even_spread_puts_a_box_share_of_attention_in_the_box():
    attention = resize_maps(torch.ones(3, 3), (90, 120))
    inside, area = share_in_box(attention, [30, 15, 60, 45])
    assert inside == pytest.approx(area, rel=1e-4) and area == pytest.approx(0.25, rel=0.01)


@pytest.mark.parametrize("size", [(320, 120), (90, 240)])
def test_figure_and_frames_keep_the_image_and_light_up_the_right_place(size):
    width, height = size
    rng = np.random.default_rng(0)
    pixels = rng.integers(80, 180, (height, width, 3), dtype=np.uint8)
    caption = one_hot_caption(["a", "red", "circle"], [(0, 0), (3, 3), (0, 3)])
    figure = attention_figure(Image.fromarray(pixels), caption, columns=2)
    images = [ax.get_images()[0].get_array() for ax in figure.axes if ax.get_images()]
    assert len(images) == 1 + 3  # the image, then one panel per word
    assert [ax.get_title() for ax in figure.axes if ax.get_images()] == ["image", "a", "red", "circle"]
    np.testing.assert_array_equal(images[0], pixels)  # drawn at its own size and aspect ratio
    for panel, (row, column) in zip(images[1:], [(0, 0), (3, 3), (0, 3)], strict=True):
        assert panel.shape == pixels.shape
        x, y = heat_centre(pixels, np.asarray(panel))
        assert abs(x - (column + 0.5) * width / 4) < width / 8 and abs(y - (row + 0.5) * height / 4) < height / 8

    frames = attention_frames(Image.fromarray(pixels), caption, min_side=1, max_side=1000)
    assert len(frames) == 3 and len({frame.size for frame in frames}) == 1
    assert frames[0].width == width and frames[0].height > height  # the image, and the words under it
    top = [np.asarray(frame)[:height] for frame in frames]  # (height, width, 3): the image part of each frame
    for frame, (row, column) in zip(top, [(0, 0), (3, 3), (0, 3)], strict=True):
        x, y = heat_centre(pixels, frame)
        assert abs(x - (column + 0.5) * width / 4) < width / 8 and abs(y - (row + 0.5) * height / 4) < height / 8


def test_an_empty_caption_still_gets_a_figure_and_a_one_frame_animation(tmp_path):
    caption = Caption("", [], -2.0, [], torch.zeros(2, 2, 0, 4, 4), torch.zeros(2, 2, 0, 0))
    png, gif = save_attention(torch.rand(3, 30, 50), caption, tmp_path, "empty")  # an image tensor, float in [0, 1]
    assert Image.open(png).size[0] > 0 and Image.open(gif).n_frames == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.gif", "empty.png"]  # no temporary files left
    with pytest.raises(ValueError, match="return_attention=True"):
        word_maps(Caption("a", [1], -1.0, ["a"]))


@pytest.mark.parametrize("encoder", ["test_vit", "test_convnext"])
def test_real_captions_of_transformer_and_cnn_trunks_draw_on_a_wide_photo(encoder, tmp_path):
    """Untrained models, real decoding: a ViT (patch grid plus a class token) and a CNN (feature map)."""
    tokenizer = CaptionTokenizer.train(["a red circle above a blue square", "a green triangle"], min_frequency=1)
    config = ModelConfig(tokenizer.vocab_size, encoder=encoder, image_size=64, dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    captioner = Captioner(CaptioningModel(config), tokenizer)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 200, 3), dtype=np.uint8))
    (caption,) = captioner.caption(photo, beam_size=2, max_length=6, min_length=3, return_attention=True)
    assert word_maps(caption).shape == (len(caption.words), *captioner.model.encoder.grid_size)
    assert word_maps(caption, layer=-1, head=1).shape == word_maps(caption).shape
    png, gif = save_attention(photo, caption, tmp_path / "maps", "photo", layer=0)
    with Image.open(gif) as animation:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(animation)]
    assert len(frames) == len(caption.words)
    width, height = frames[0].size
    assert width == 256 and abs(height - 64 - 256 * 60 / 200) <= 1  # scaled up to 256 px wide, aspect kept
    assert Image.open(png).format == "PNG"


# ------------------------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="session")
def viz_captioner(viz_runs) -> Captioner:
    return Captioner.from_checkpoint(viz_runs[1] / "checkpoints" / "last.ckpt", device="cpu")


def colour_word_shares(captioner: Captioner, root: Path, stretch: tuple[float, float] = (1, 1)) -> list[tuple]:
    """For every colour word of the test captions that names a shape of the scene ("red" in "a red circle" when the
    scene has a red circle): (word, attention inside that shape's box, the box's share of the image).

    With `stretch` the images are first resized by (sx, sy) and the boxes with them: the maps must follow.
    """
    records = load_coco_captions(annotation_path(root, "test"), root / "test")
    images = []
    for record in records:
        image = Image.open(record.path).convert("RGB")
        images.append(image.resize((round(image.width * stretch[0]), round(image.height * stretch[1]))))
    shares = []
    for record, image, caption in zip(records, images, captioner.caption(images, return_attention=True), strict=True):
        maps = resize_maps(word_maps(caption), (image.height, image.width))  # (T, height, width)
        for t, (word, following) in enumerate(zip(caption.words[:-1], caption.words[1:], strict=True)):
            named = [s for s in record.scene if (s["colour"], s["kind"]) == (word, following)]
            if word not in COLOURS or following not in KINDS or not named:
                continue
            mask = np.zeros((image.height, image.width), dtype=bool)
            for shape in named:  # two shapes alike: the caption may mean either
                x, y, w, h = shape["bbox"]
                mask |= box_mask([x * stretch[0], y * stretch[1], w * stretch[0], h * stretch[1]], mask.shape)
            shares.append((word, float(maps[t][mask].sum()), float(mask.mean())))
    return shares


@pytest.mark.slow
@pytest.mark.parametrize("stretch", [(1, 1), (2, 1), (1, 2.5)], ids=["square", "wide", "tall"])
def test_colour_words_look_at_the_shape_they_name(viz_runs, viz_captioner, stretch):
    """The share of a colour word's attention that falls inside the box of the shape it names is larger than the
    box's share of the image, for at least 80% of such words, also when the image is stretched to another aspect
    ratio (the maps are laid over the stretched image, so they must stretch with it)."""
    shares = colour_word_shares(viz_captioner, viz_runs[1].parents[2] / "shapes", stretch)
    looking = [inside > area for _, inside, area in shares]
    rate = sum(looking) / max(1, len(looking))
    inside, area = np.mean([s[1] for s in shares]), np.mean([s[2] for s in shares])
    report = (
        f"{sum(looking)}/{len(looking)} colour words ({rate:.0%}); {inside:.1%} of attention in boxes of {area:.1%}"
    )
    print(f"stretch {stretch}: {report}")
    assert len(shares) >= 30, report
    assert rate >= 0.8, report


@pytest.mark.slow
def test_caption_script_writes_a_grid_and_an_animation_per_image(viz_runs, tmp_path):
    """As a user runs it: shapes images, one of them twice under the same name, and real photos of any shape."""
    shapes = sorted((viz_runs[1].parents[2] / "shapes" / "test").glob("*.png"))[:2]
    (tmp_path / "copy").mkdir()
    twin = Path(shutil.copy(shapes[0], tmp_path / "copy" / shapes[0].name))
    photos = []
    if COCO_MINI.exists():  # a tall and a very wide photo
        photos = [COCO_MINI / "val2017" / "000000000802.jpg", COCO_MINI / "val2017" / "000000161044.jpg"]
    images = [*shapes, twin, *photos]
    maps = tmp_path / "maps"
    checkpoint = viz_runs[1] / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "captioning", "caption", "--checkpoint", str(checkpoint), "--attention-dir", str(maps),
         *map(str, images)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in images]  # the output is unchanged
    names = [shapes[0].stem, shapes[1].stem, f"{shapes[0].stem}-2", *[p.stem for p in photos]]
    assert sorted(p.name for p in maps.iterdir()) == sorted(f"{n}.{s}" for n in names for s in ("png", "gif"))
    for image, name, line in zip(images, names, lines, strict=True):
        words = line.split("\t")[1].split()
        with Image.open(maps / f"{name}.gif") as animation:
            assert animation.n_frames == len(words)
            width, height = animation.size
        with Image.open(image) as original:
            aspect = original.width / original.height
        assert abs(width / (height - 64) - aspect) < 0.02 * aspect  # the image keeps its aspect ratio, text below
        with Image.open(maps / f"{name}.png") as grid:
            assert grid.format == "PNG" and grid.width > 500


def test_caption_script_names_an_attention_dir_it_cannot_create(tmp_path, capsys):
    from captioning.caption import main

    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square"], min_frequency=1)
    config = ModelConfig(tokenizer.vocab_size, encoder="test_convnext", image_size=64, dim=32, depth=1, num_heads=2)
    state = {f"model.{key}": value for key, value in CaptioningModel(config).state_dict().items()}
    checkpoint = tmp_path / "untrained.ckpt"
    torch.save({"captioning": checkpoint_metadata(config, tokenizer), "state_dict": state}, checkpoint)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), "red").save(image)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--checkpoint", str(checkpoint), "--attention-dir", str(blocker / "maps"), str(image)]) == 2
    assert f"error: --attention-dir {blocker / 'maps'}: cannot create the folder" in capsys.readouterr().err
