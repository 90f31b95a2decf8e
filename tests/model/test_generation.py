"""Decoding: cached equals recomputed, beam 1 equals greedy, batching changes nothing, the memory is shared.

Each test runs on a tiny random model and on the tiny model trained on shapes (tests/helpers.py), whose
captions end at different steps for different images and beams.
"""

from __future__ import annotations

import pytest
import torch

from captioning.decoding import DecodeSpec, Generated, TokenIds, generate
from captioning.decoding.ops import NUMPY, NumpyOps
from captioning.errors import UserError
from captioning.inference import Captioner
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import TorchStepper, decode
from tests.conftest import TINY_MODEL

V, BOS, PAD = 30, 1, 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["random", "trained"])
def case(request) -> tuple[CaptioningModel, torch.Tensor, int]:
    """A model, the memory (B, M, D) of a few images, and an end token that ends captions at different steps."""
    if request.param == "trained":
        checkpoint = request.getfixturevalue("tiny_checkpoint")
        captioner = Captioner.from_checkpoint(checkpoint)
        assert (captioner.tokenizer.bos_id, captioner.tokenizer.pad_id) == (BOS, PAD)
        root = checkpoint.parent / "shapes" / "test"
        images = torch.stack([captioner.preprocess(path) for path in sorted(root.glob("*.png"))[:12]])
        with torch.no_grad():
            return captioner.model, captioner.model.encode(images), captioner.tokenizer.eos_id
    torch.manual_seed(0)
    model = CaptioningModel(ModelConfig(vocab_size=V, dropout=0.0, **TINY_MODEL)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        memory = model.encode(torch.randn(6, 3, 64, 64))
    # As end token, the word that this random model's greedy captions reach at the most different steps.
    tokens = run(model, memory, eos=-1).tokens  # (B, 12)
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


def run(model, memory, eos, max_length: int = 12, *, use_cache: bool = True, **fields) -> Generated:
    """Decodes with a spec of the given fields: greedy by default, no minimum length, padding and start suppressed."""
    spec = DecodeSpec(**{"mode": "greedy", "min_length": 0, "max_length": max_length, **fields})
    return decode(model.decoder, memory, spec, TokenIds(BOS, eos, PAD), use_cache=use_cache)


def _captions(generated: Generated) -> list[list[int]]:
    return [row[:length] for row, length in zip(generated.tokens.tolist(), generated.lengths.tolist(), strict=True)]


def _assert_same(a: Generated, b: Generated) -> None:
    assert _captions(a) == _captions(b)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=0, atol=1e-5)
    assert a.lengths.tolist() == b.lengths.tolist()


def test_captions_end_at_different_steps(model, memory, eos):
    lengths = run(model, memory, eos).lengths
    assert len(set(lengths.tolist())) > 1 and lengths.min() < 12


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "beam", "beam_size": 3},
        {"mode": "beam", "beam_size": 4, "include_greedy": False, "length_penalty": 0.6},
        {"mode": "beam", "beam_size": 3, "no_repeat_ngram_size": 2, "min_length": 3, "suppress_tokens": [5]},
    ],
)
def test_cached_beam_search_equals_recomputing_every_step(model, memory, eos, options):
    _assert_same(run(model, memory, eos, **options), run(model, memory, eos, use_cache=False, **options))


def test_cached_greedy_and_sampling_equal_recomputing_every_step(model, memory, eos):
    _assert_same(
        run(model, memory, eos, no_repeat_ngram_size=1),
        run(model, memory, eos, no_repeat_ngram_size=1, use_cache=False),
    )
    options = {"mode": "sample", "num_samples": 2, "temperature": 0.8, "top_k": 10, "top_p": 0.9, "seed": 0}
    _assert_same(run(model, memory, eos, **options), run(model, memory, eos, use_cache=False, **options))


def test_scores_are_the_log_probability_of_the_returned_caption(model, memory, eos):
    """Re-reading each returned caption with teacher forcing gives back its summed log-probability."""
    generated = run(model, memory, eos, mode="beam", beam_size=3)
    inputs = torch.cat([torch.full((len(memory), 1), BOS), generated.tokens[:, :-1]], dim=1)  # (B, L)
    with torch.no_grad():
        log_probs = model.decoder(inputs, memory).log_softmax(-1)  # (B, L, V)
    token_log_probs = log_probs.gather(2, generated.tokens[..., None]).squeeze(2)  # (B, L)
    counted = torch.arange(generated.tokens.size(1))[None] < generated.lengths[:, None]
    torch.testing.assert_close(token_log_probs.where(counted, 0.0).sum(1), generated.log_probs, rtol=0, atol=1e-5)


def test_beam_size_one_is_greedy_decoding(model, memory, eos):
    for options in ({}, {"min_length": 4, "no_repeat_ngram_size": 2}):
        _assert_same(run(model, memory, eos, mode="beam", beam_size=1, **options), run(model, memory, eos, **options))


@pytest.mark.parametrize("search", ["greedy", "beam", "textbook beam"])
def test_a_batch_of_images_gives_the_same_captions_as_one_image_at_a_time(model, memory, eos, search):
    options = {} if search == "greedy" else {"mode": "beam", "beam_size": 4, "include_greedy": search == "beam"}
    batched = run(model, memory, eos, **options)
    singles = [run(model, memory[i : i + 1], eos, **options) for i in range(len(memory))]
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
        run(model, memory, eos, mode="beam", beam_size=5)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [len(memory)] * len(model.decoder.blocks)


def test_length_limits_suppressed_tokens_and_repeated_ngrams(model, memory, eos):
    options = {"max_length": 9, "min_length": 5, "suppress_tokens": [7], "no_repeat_ngram_size": 2}
    for generated in (
        run(model, memory, eos, mode="beam", beam_size=3, **options),
        run(model, memory, eos, **options),
        run(model, memory, eos, mode="sample", seed=0, **options),
    ):
        for caption in _captions(generated):
            words = caption[:-1] if caption[-1] == eos else caption
            assert 5 <= len(words) and len(caption) <= 9
            assert not {PAD, BOS, 7, eos} & set(words)
            bigrams = list(zip(words, words[1:], strict=False))
            assert len(bigrams) == len(set(bigrams))


def test_sampling_is_reproducible_with_a_seed_and_follows_its_settings(model, memory, eos):
    def draw(seed: int, **options) -> Generated:
        return run(model, memory, eos, mode="sample", seed=seed, **options)

    _assert_same(draw(0), draw(0))
    assert _captions(draw(0)) != _captions(draw(1))
    greedy = run(model, memory, eos)
    _assert_same(draw(3, top_k=1), greedy)  # only the most probable token left
    _assert_same(draw(4, top_p=1e-6), greedy)  # the nucleus shrinks to the most probable token
    _assert_same(draw(5, temperature=1e-4), greedy)
    four = draw(0, num_samples=4)
    assert four.tokens.size(0) == 4 * len(memory)
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_k": -1}):
        with pytest.raises(ValueError):
            draw(0, **bad)


class NumpyStepper:
    """The torch model's numbers handed over as NumPy arrays, as onnxruntime hands them over."""

    ops = NUMPY

    def __init__(self, decoder, memory: torch.Tensor) -> None:
        self.inner = TorchStepper(decoder, memory)
        self.num_images, self.max_length = self.inner.num_images, self.inner.max_length

    def __call__(self, history):
        return self.inner(torch.from_numpy(history)).numpy()

    def reorder(self, rows) -> None:
        self.inner.reorder(torch.from_numpy(rows))


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": "greedy", "no_repeat_ngram_size": 2},
        {"mode": "beam", "beam_size": 3, "min_length": 2},
        {"mode": "sample", "seed": 7, "num_samples": 3, "top_p": 0.9, "top_k": 8, "temperature": 1.3},
    ],
    ids=["greedy", "beam", "sample"],
)
def test_the_search_code_chooses_the_same_tokens_over_numpy_arrays_as_over_torch_tensors(model, memory, eos, fields):
    """One implementation for both backends: given the same log-probabilities, NumPy and torch pick alike."""
    spec = DecodeSpec(**{"max_length": 12, **fields})
    ids = TokenIds(BOS, eos, PAD)
    with torch.no_grad():
        on_numpy = generate(NumpyStepper(model.decoder, memory), spec, ids)
    on_torch = decode(model.decoder, memory, spec, ids)
    assert on_numpy.tokens.tolist() == on_torch.tokens.tolist()
    assert on_numpy.lengths.tolist() == on_torch.lengths.tolist()
    assert abs(on_numpy.log_probs - on_torch.log_probs.numpy()).max() < 1e-5


class Every4(NumpyOps):
    sync_every = 4


def test_reading_the_end_flag_every_few_steps_changes_no_caption(model, memory, eos):
    """A GPU reads "have all rows ended?" back every few steps only; the rows that ended idle on padding."""
    spec, ids = DecodeSpec(mode="sample", seed=3, num_samples=2, max_length=12), TokenIds(BOS, eos, PAD)
    every_step = NumpyStepper(model.decoder, memory)
    every_fourth = NumpyStepper(model.decoder, memory)
    every_fourth.ops = Every4()
    with torch.no_grad():
        a, b = generate(every_step, spec, ids), generate(every_fourth, spec, ids)
    width = a.tokens.shape[1]
    assert b.tokens.shape[1] >= width and (b.tokens[:, width:] == PAD).all()
    assert b.tokens[:, :width].tolist() == a.tokens.tolist() and b.lengths.tolist() == a.lengths.tolist()


def test_a_bad_spec_field_gets_an_error_naming_it():
    for field, value in [("mode", "nucleus"), ("beam_size", 0), ("top_p", 0.0), ("temperature", 0), ("top_k", -1)]:
        with pytest.raises(UserError, match=rf"decoding field '{field}' must be .*, got {value!r}"):
            DecodeSpec(**{field: value})
    with pytest.raises(UserError, match=r"ckpt: unknown decoding field\(s\): beams"):
        DecodeSpec.from_dict({"beams": 3}, "ckpt")
    with pytest.raises(UserError, match=r"unknown decoding field\(s\): beams"):
        DecodeSpec().with_options(beams=3)
    assert DecodeSpec().with_options(sample=True, top_p=None).mode == "sample"  # None: not given
