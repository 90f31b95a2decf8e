"""The Python API on a really trained tiny model: inputs of every kind, batching, beam vs greedy, attention maps."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from captioning.data.transforms import load_image
from captioning.decoding import DecodeSpec
from captioning.errors import UserError
from captioning.inference import Caption, Captioner
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import decode
from tests.conftest import TINY_MODEL
from tests.helpers import broken_images, odd_images

pytestmark = pytest.mark.usefixtures("one_thread")


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
    greedy = decode(model.decoder, memory, DecodeSpec(mode="greedy"), tok).scores
    textbook = decode(model.decoder, memory, DecodeSpec(beam_size=3, include_greedy=False), tok).scores
    assert textbook.mean() > greedy.mean()


def fond_of_the_unknown_word(captioner: Captioner) -> Captioner:
    """The same model, except that it ranks the unknown token far above every word at every step."""
    model = copy.deepcopy(captioner.model)
    bias = torch.zeros(captioner.tokenizer.vocab_size)
    bias[captioner.tokenizer.unk_id] = 30.0
    model.decoder.head.register_forward_hook(lambda module, args, logits: logits + bias)
    return Captioner(model, captioner.tokenizer)


@pytest.mark.parametrize("options", [{"beam_size": 3}, {"beam_size": 1}, {"sample": True, "seed": 0}])
def test_unknown_word_is_never_generated_by_default_and_shows_as_unk_when_allowed(captioner, test_images, options):
    fond, unk = fond_of_the_unknown_word(captioner), captioner.tokenizer.unk_id
    for caption in fond.caption(test_images[:4], max_length=6, **options):
        assert unk not in caption.tokens and "<unk>" not in caption.words and caption.text
    for caption in fond.caption(test_images[:4], max_length=6, suppress_unk=False, **options):
        assert unk in caption.tokens and "<unk>" in caption.words and "<unk>" in caption.text.split(" ")
        assert caption.text == " ".join(caption.words)


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


def test_attention_maps_of_a_vit_leave_out_the_sink_and_its_class_token(captioner):
    changes = {"encoder": "test_vit", "freeze_encoder": False, "memory_sink": True}
    config = ModelConfig(**{**captioner.model.config.to_dict(), **changes})
    torch.manual_seed(0)
    vit = Captioner(CaptioningModel(config), captioner.tokenizer)
    assert vit.model.encoder.grid_size == (4, 4) and vit.model.encoder.num_prefix_tokens == 1
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    for caption in vit.caption(images, return_attention=True, min_length=2):
        _assert_attention(caption, config.depth, config.num_heads, (4, 4), 2)


def test_images_as_they_come_all_caption(captioner, tmp_path):
    paths = odd_images(tmp_path)
    captions = captioner.caption(list(paths.values()), batch_size=4)
    assert len(captions) == len(paths) and all(c.text for c in captions)
    upright = captioner.preprocess(paths["exif-rotated.jpg"])
    assert upright.shape == (3, 64, 64)
    assert load_image(paths["exif-rotated.jpg"]).size == (48, 64)  # turned upright: 64 x 48 stored


def test_unreadable_images_raise_an_error_that_names_the_file(captioner, tmp_path):
    for name, path in broken_images(tmp_path).items():
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


def test_a_checkpoint_s_decoding_spec_comes_from_its_entry_its_training_module_or_the_default():
    from captioning.checkpoint import default_spec
    from captioning.errors import CheckpointError

    stored = DecodeSpec(mode="beam", beam_size=5, no_repeat_ngram_size=2)
    assert default_spec({"captioning": {"decode_spec": stored.to_dict()}}) == stored
    hparams = {"hyper_parameters": {"eval_beam_size": 1, "eval_length_penalty": 0.7}}
    assert default_spec(hparams) == DecodeSpec(mode="greedy", beam_size=1, length_penalty=0.7)
    assert default_spec({"captioning": {}}) == DecodeSpec()  # checkpoints from before specs: 3 beams, as then
    with pytest.raises(CheckpointError, match=r"old\.ckpt: .*'beam_size' must be an integer >= 1, got 0"):
        default_spec({"hyper_parameters": {"eval_beam_size": 0}}, "old.ckpt")
    with pytest.raises(UserError, match=r"x\.ckpt: captioning\.decode_spec: unknown decoding field\(s\): beams"):
        default_spec({"captioning": {"decode_spec": {"beams": 2}}}, "x.ckpt")


def test_a_fitted_checkpoint_stores_the_spec_its_validation_decoded_with(checkpoint):
    from captioning.checkpoint import checkpoint_spec, read_checkpoint

    stored = read_checkpoint(checkpoint)
    hparams = stored["hyper_parameters"]  # the shapes config's: greedy
    spec = DecodeSpec.beams(hparams["eval_beam_size"], length_penalty=hparams["eval_length_penalty"])
    assert stored["captioning"]["decode_spec"] == spec.to_dict()
    assert checkpoint_spec(checkpoint) == spec
