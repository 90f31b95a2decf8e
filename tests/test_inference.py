"""The Python API on a really trained tiny model: inputs of every kind, batching, beam vs greedy, attention maps."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captioning.checkpoint import checkpoint_metadata
from captioning.data.coco import load_coco_captions
from captioning.data.shapes import annotation_path, ensure_shapes
from captioning.data.transforms import build_transform, load_image
from captioning.inference import Caption, Captioner
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import beam_search, greedy_decode
from captioning.text.tokenizer import CaptionTokenizer
from tests.conftest import TINY_MODEL

SPLITS = {"train": 512, "test": 32}


@functools.cache
def train_tiny_checkpoint(folder: Path, steps: int = 600) -> Path:
    """Trains the tiny model on shapes for `steps` real steps and writes a checkpoint as training does.

    The encoder is frozen (random timm weights) and its tokens are computed once, so the decoder trains in about
    twenty seconds on two CPU cores. Cached: every test module of the session gets the same checkpoint.
    """
    path = folder / "tiny.ckpt"
    root = folder / "shapes"
    ensure_shapes(root, image_size=64, split_sizes=SPLITS)
    records = load_coco_captions(annotation_path(root, "train"), root / "train")
    tokenizer = CaptionTokenizer.train([c for r in records for c in r.captions], min_frequency=1)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, freeze_encoder=True, dropout=0.0, **TINY_MODEL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and much faster on a busy machine
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        model = CaptioningModel(config)
        transform = build_transform(config.encoder, config.image_size)
        with torch.no_grad():
            images = torch.stack([transform(load_image(r.path)) for r in records])  # (N, 3, 64, 64)
            features = model.encoder.eval()(images)  # (N, M, C_enc), frozen: computed once
        K = 5
        tokens = tokenizer.encode([c for r in records for c in r.captions[:K]], config.max_length)  # (N*K, T)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        model.train()
        for _ in range(steps):
            index = torch.randint(len(records), (32,), generator=generator)  # (B,)
            batch = tokens[(index[:, None] * K + torch.arange(K)).flatten()]  # (B*K, T): K captions per image
            logits = model.decoder(batch[:, :-1], model.project(features[index]))  # (B*K, T-1, V)
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), ignore_index=tokenizer.pad_id)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"captioning": checkpoint_metadata(config, tokenizer), "state_dict": state}, path)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and many times faster when other processes keep the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-captioner")


@pytest.fixture(scope="session")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def test_images(tiny_checkpoint) -> list[Path]:
    root = tiny_checkpoint.parent / "shapes"
    return [r.path for r in load_coco_captions(annotation_path(root, "test"), root / "test")]


def test_captions_paths_pil_images_arrays_and_tensors(captioner, test_images):
    path = test_images[0]
    image = load_image(path)
    (from_path,) = captioner.caption(path)
    assert isinstance(from_path, Caption) and from_path.text and from_path.score < 0
    assert from_path.tokens and from_path.text == " ".join(from_path.words)
    assert captioner.caption(image)[0] == from_path  # a PIL image is the same picture as its file
    assert captioner.caption(np.asarray(image))[0].text == from_path.text
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W) uint8
    as_tensors = captioner.caption([pixels, pixels.float() / 255, torch.stack([pixels.float() / 255] * 2)])
    assert len(as_tensors) == 4 and len({c.text for c in as_tensors[1:]}) == 1  # a (B, 3, H, W) tensor is B images
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        captioner.caption(pixels.float())
    with pytest.raises(TypeError, match="cannot caption a dict"):
        captioner.caption([{}])


def test_a_batch_of_images_gives_the_same_captions_as_one_call_each(captioner, test_images):
    images = test_images[:12]
    for options in ({"beam_size": 3}, {"beam_size": 1}, {"beam_size": 5, "no_repeat_ngram_size": 3}):
        batched = captioner.caption(images, batch_size=5, **options)
        singles = [captioner.caption(image, **options)[0] for image in images]
        assert [c.tokens for c in batched] == [c.tokens for c in singles]
        np.testing.assert_allclose([c.score for c in batched], [c.score for c in singles], atol=1e-5)


@pytest.mark.parametrize("beam_size", [3, 5])
def test_beam_search_never_scores_below_greedy_on_the_test_split(captioner, test_images, beam_size):
    """Scores are length-normalised log-probabilities (mean per token, end token included)."""
    greedy = np.array([c.score for c in captioner.caption(test_images, beam_size=1)])
    beam = np.array([c.score for c in captioner.caption(test_images, beam_size=beam_size)])
    assert (beam >= greedy - 1e-5).all(), np.flatnonzero(beam < greedy - 1e-5)
    assert beam.mean() > greedy.mean()  # and it finds better captions for some images


def test_textbook_beam_search_improves_on_greedy_on_average(captioner, test_images):
    """Without the greedy candidate beam search may end below greedy for some images, but not on the whole."""
    model, tok = captioner.model, captioner.tokenizer
    memory = model.encode(torch.stack([captioner.preprocess(p) for p in test_images]))
    ids = (tok.bos_id, tok.eos_id, tok.pad_id)
    rules = {"suppress_tokens": [tok.pad_id, tok.bos_id, tok.unk_id], "min_length": 1}
    greedy = greedy_decode(model.decoder, memory, *ids, **rules).scores
    textbook = beam_search(model.decoder, memory, *ids, beam_size=3, include_greedy=False, **rules).scores
    assert textbook.mean() > greedy.mean()


def test_sampling_with_a_seed_is_reproducible(captioner, test_images):
    options = {"sample": True, "temperature": 1.5, "top_p": 0.95, "batch_size": 8}
    first = captioner.caption(test_images[:8], seed=1, **options)
    assert first == captioner.caption(test_images[:8], seed=1, **options)
    assert first != captioner.caption(test_images[:8], seed=2, **options)
    with pytest.raises(ValueError, match="temperature"):
        captioner.caption(test_images[0], sample=True, temperature=0)


def _assert_attention(caption: Caption, layers: int, heads: int, grid: tuple[int, int], prefix: int) -> None:
    T = len(caption.tokens)
    assert T > 0 and len(caption.words) == T
    assert caption.cross_attention.shape == (layers, heads, T, *grid)
    assert caption.prefix_attention.shape == (layers, heads, T, prefix)
    assert caption.attention_map.shape == (T, *grid)
    total = caption.cross_attention.sum(dim=(-2, -1)) + caption.prefix_attention.sum(-1)  # over the whole memory
    torch.testing.assert_close(total, torch.ones(layers, heads, T))
    assert (caption.cross_attention >= 0).all()


def test_attention_maps_cover_the_cnn_feature_grid(captioner, test_images):
    captions = captioner.caption(test_images[:6], return_attention=True)
    encoder = captioner.model.encoder
    for caption in captions:
        _assert_attention(caption, TINY_MODEL["depth"], TINY_MODEL["num_heads"], encoder.grid_size, 0)
    assert [c.text for c in captions] == [c.text for c in captioner.caption(test_images[:6])]


def test_attention_maps_of_a_vit_leave_out_its_class_token(captioner):
    config = ModelConfig(**{**captioner.model.config.to_dict(), "encoder": "test_vit", "freeze_encoder": False})
    torch.manual_seed(0)
    vit = Captioner(CaptioningModel(config), captioner.tokenizer)
    assert vit.model.encoder.grid_size == (4, 4) and vit.model.encoder.num_prefix_tokens == 1
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    for caption in vit.caption(images, return_attention=True, min_length=2):
        _assert_attention(caption, config.depth, config.num_heads, (4, 4), 1)


def _odd_images(folder: Path) -> dict[str, Path]:
    """Images as they come from cameras, phones, scanners and the web, written into `folder`."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    files = {
        "grayscale.png": rgb.convert("L"),
        "gray-alpha.png": rgb.convert("LA"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "16-bit.png": Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)),
        "tiny.png": Image.new("RGB", (1, 1), (200, 10, 10)),
        "huge.jpg": Image.new("RGB", (6000, 4000), (30, 120, 200)),
        "bilevel.bmp": rgb.convert("1"),
    }
    paths = {}
    for name, image in files.items():
        paths[name] = folder / name
        image.save(paths[name])
    transparent = rgb.convert("P")
    transparent.info["transparency"] = 0
    paths["palette-transparent.png"] = folder / "palette-transparent.png"
    transparent.save(paths["palette-transparent.png"], transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    paths["exif-rotated.jpg"] = folder / "exif-rotated.jpg"
    rgb.save(paths["exif-rotated.jpg"], exif=exif)
    return paths


def _broken_images(folder: Path) -> dict[str, Path]:
    """A truncated JPEG, a text file named like an image, and a decompression bomb (tiny on disk)."""
    good = folder / "source.jpg"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(good)
    data = good.read_bytes()
    paths = {"truncated.jpg": folder / "truncated.jpg", "not-an-image.jpg": folder / "not-an-image.jpg"}
    paths["truncated.jpg"].write_bytes(data[: len(data) // 2])
    paths["not-an-image.jpg"].write_text("this is not a picture\n")
    paths["bomb.png"] = folder / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(paths["bomb.png"])  # 90 Mpx, over Pillow's 89.5 Mpx limit
    good.unlink()
    return paths


def test_images_as_they_come_all_caption(captioner, tmp_path):
    paths = _odd_images(tmp_path)
    captions = captioner.caption(list(paths.values()), batch_size=4)
    assert len(captions) == len(paths) and all(c.text for c in captions)
    upright = captioner.preprocess(paths["exif-rotated.jpg"])
    assert upright.shape == (3, 64, 64)
    assert load_image(paths["exif-rotated.jpg"]).size == (48, 64)  # turned upright: 64 x 48 stored


def test_unreadable_images_raise_an_error_that_names_the_file(captioner, tmp_path):
    for name, path in _broken_images(tmp_path).items():
        with pytest.raises(OSError, match=f"{name}: cannot read image"):
            captioner.caption(path)


def test_from_checkpoint_names_a_missing_file_and_a_bad_device(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Captioner.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        Captioner.from_checkpoint(tiny_checkpoint, device="gpu0")


def test_shuffled_inputs_get_their_own_captions(captioner, test_images):
    order = list(range(len(test_images[:10])))
    random.Random(0).shuffle(order)
    captions = captioner.caption(test_images[:10])
    shuffled = captioner.caption([test_images[i] for i in order], batch_size=3)
    assert [c.text for c in shuffled] == [captions[i].text for i in order]
