"""Decoding: cached equals recomputed, beam 1 equals greedy, batching changes nothing, the memory is shared.

Each test runs on a tiny random model and on the tiny model trained on shapes (tests/helpers.py), whose
captions end at different steps for different images and beams.
"""

from __future__ import annotations

import pytest
import torch

from captioning.inference import Captioner
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import Generated, beam_search, greedy_decode, sample_decode
from tests.conftest import TINY_MODEL
from tests.helpers import train_tiny_checkpoint

V, BOS, PAD = 30, 1, 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["random", "trained"])
def case(request, tmp_path_factory) -> tuple[CaptioningModel, torch.Tensor, int]:
    """A model, the memory (B, M, D) of a few images, and an end token that ends captions at different steps."""
    if request.param == "trained":
        captioner = Captioner.from_checkpoint(train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-captioner"))
        assert (captioner.tokenizer.bos_id, captioner.tokenizer.pad_id) == (BOS, PAD)
        root = tmp_path_factory.getbasetemp() / "tiny-captioner" / "shapes" / "test"
        images = torch.stack([captioner.preprocess(path) for path in sorted(root.glob("*.png"))[:12]])
        with torch.no_grad():
            return captioner.model, captioner.model.encode(images), captioner.tokenizer.eos_id
    torch.manual_seed(0)
    model = CaptioningModel(ModelConfig(vocab_size=V, dropout=0.0, **TINY_MODEL)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        memory = model.encode(torch.randn(6, 3, 64, 64))
    # As end token, the word that this random model's greedy captions reach at the most different steps.
    tokens = greedy_decode(model.decoder, memory, BOS, eos_id=-1, pad_id=PAD, max_length=12).tokens  # (B, 12)
    first = torch.where(tokens[..., None] == torch.arange(V), torch.arange(12)[None, :, None], 12).amin(1)  # (B, V)
    spread = torch.tensor([len(set(first[:, v].tolist())) for v in range(V)])
    spread[[BOS, PAD]] = 0
    return model, memory, int(spread.argmax())


@pytest.fixture(scope="module")
def model(case) -> CaptioningModel:
    return case[0]


@pytest.fixture(scope="module")
def memory(case) -> torch.Tensor:
    return case[1]


@pytest.fixture(scope="module")
def eos(case) -> int:
    return case[2]


def _captions(generated: Generated) -> list[list[int]]:
    return [row[:length] for row, length in zip(generated.tokens.tolist(), generated.lengths.tolist(), strict=True)]


def _assert_same(a: Generated, b: Generated) -> None:
    assert _captions(a) == _captions(b)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=0, atol=1e-5)
    assert a.lengths.tolist() == b.lengths.tolist()


def test_captions_end_at_different_steps(model, memory, eos):
    lengths = greedy_decode(model.decoder, memory, BOS, eos, PAD, 12).lengths
    assert len(set(lengths.tolist())) > 1 and lengths.min() < 12


@pytest.mark.parametrize(
    "options",
    [
        {"beam_size": 3},
        {"beam_size": 4, "include_greedy": False, "length_penalty": 0.6},
        {"beam_size": 3, "no_repeat_ngram_size": 2, "min_length": 3, "suppress_tokens": [PAD, BOS]},
    ],
)
def test_cached_beam_search_equals_recomputing_every_step(model, memory, eos, options):
    cached = beam_search(model.decoder, memory, BOS, eos, PAD, 12, **options)
    recomputed = beam_search(model.decoder, memory, BOS, eos, PAD, 12, use_cache=False, **options)
    _assert_same(cached, recomputed)


def test_cached_greedy_and_sampling_equal_recomputing_every_step(model, memory, eos):
    _assert_same(
        greedy_decode(model.decoder, memory, BOS, eos, PAD, 12, no_repeat_ngram_size=1),
        greedy_decode(model.decoder, memory, BOS, eos, PAD, 12, no_repeat_ngram_size=1, use_cache=False),
    )
    options = {"num_samples": 2, "temperature": 0.8, "top_k": 10, "top_p": 0.9}
    cached = sample_decode(
        model.decoder, memory, BOS, eos, PAD, 12, generator=torch.Generator().manual_seed(0), **options
    )
    generator = torch.Generator().manual_seed(0)
    recomputed = sample_decode(
        model.decoder, memory, BOS, eos, PAD, 12, generator=generator, use_cache=False, **options
    )
    _assert_same(cached, recomputed)


def test_scores_are_the_log_probability_of_the_returned_caption(model, memory, eos):
    """Re-reading each returned caption with teacher forcing gives back its summed log-probability."""
    generated = beam_search(model.decoder, memory, BOS, eos, PAD, 12, beam_size=3)
    inputs = torch.cat([torch.full((len(memory), 1), BOS), generated.tokens[:, :-1]], dim=1)  # (B, L)
    with torch.no_grad():
        log_probs = model.decoder(inputs, memory).log_softmax(-1)  # (B, L, V)
    token_log_probs = log_probs.gather(2, generated.tokens[..., None]).squeeze(2)  # (B, L)
    counted = torch.arange(generated.tokens.size(1))[None] < generated.lengths[:, None]
    torch.testing.assert_close(token_log_probs.where(counted, 0.0).sum(1), generated.log_probs, rtol=0, atol=1e-5)


def test_beam_size_one_is_greedy_decoding(model, memory, eos):
    for options in ({}, {"min_length": 4, "no_repeat_ngram_size": 2}):
        _assert_same(
            beam_search(model.decoder, memory, BOS, eos, PAD, 12, beam_size=1, **options),
            greedy_decode(model.decoder, memory, BOS, eos, PAD, 12, **options),
        )


@pytest.mark.parametrize("decode", ["greedy", "beam", "textbook beam"])
def test_a_batch_of_images_gives_the_same_captions_as_one_image_at_a_time(model, memory, eos, decode):
    def run(images: torch.Tensor) -> Generated:
        if decode == "greedy":
            return greedy_decode(model.decoder, images, BOS, eos, PAD, 12)
        return beam_search(model.decoder, images, BOS, eos, PAD, 12, beam_size=4, include_greedy=decode == "beam")

    batched = run(memory)
    singles = [run(memory[i : i + 1]) for i in range(len(memory))]
    assert _captions(batched) == [_captions(s)[0] for s in singles]
    torch.testing.assert_close(batched.log_probs, torch.cat([s.log_probs for s in singles]), rtol=0, atol=1e-5)


def test_beams_share_each_images_projected_memory(model, memory, eos):
    """Each layer's cross-attention projects the memory of the B images once for the whole search, not B*K rows."""
    calls = []
    hooks = [
        block.cross_attn.kv.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        for block in model.decoder.blocks
    ]
    try:
        beam_search(model.decoder, memory, BOS, eos, PAD, 12, beam_size=5)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [len(memory)] * len(model.decoder.blocks)


def test_length_limits_suppressed_tokens_and_repeated_ngrams(model, memory, eos):
    options = {"min_length": 5, "suppress_tokens": [PAD, BOS, 7], "no_repeat_ngram_size": 2}
    for generated in (
        beam_search(model.decoder, memory, BOS, eos, PAD, 9, beam_size=3, **options),
        greedy_decode(model.decoder, memory, BOS, eos, PAD, 9, **options),
        sample_decode(model.decoder, memory, BOS, eos, PAD, 9, generator=torch.Generator().manual_seed(0), **options),
    ):
        for caption in _captions(generated):
            words = caption[:-1] if caption[-1] == eos else caption
            assert 5 <= len(words) and len(caption) <= 9
            assert not {PAD, BOS, 7, eos} & set(words)
            bigrams = list(zip(words, words[1:], strict=False))
            assert len(bigrams) == len(set(bigrams))


def test_sampling_is_reproducible_with_a_seed_and_follows_its_settings(model, memory, eos):
    def draw(seed: int, **options) -> Generated:
        generator = torch.Generator().manual_seed(seed)
        return sample_decode(model.decoder, memory, BOS, eos, PAD, 12, generator=generator, **options)

    _assert_same(draw(0), draw(0))
    assert _captions(draw(0)) != _captions(draw(1))
    greedy = greedy_decode(model.decoder, memory, BOS, eos, PAD, 12)
    _assert_same(draw(3, top_k=1), greedy)  # only the most probable token left
    _assert_same(draw(4, top_p=1e-6), greedy)  # the nucleus shrinks to the most probable token
    _assert_same(draw(5, temperature=1e-4), greedy)
    four = draw(0, num_samples=4)
    assert four.tokens.size(0) == 4 * len(memory)
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_k": -1}):
        with pytest.raises(ValueError):
            draw(0, **bad)
