"""Behaviour of the plain-torch model: causality, use of the image, shared memory, cached decoding."""

from __future__ import annotations

import pytest
import torch

from captioning.decoding import DecodeSpec, TokenIds
from captioning.errors import UserError
from captioning.model import Attention, CaptioningModel, ImageEncoder, ModelConfig
from captioning.model.generation import decode
from tests.conftest import TINY_MODEL

V = 30


@pytest.fixture()
def model() -> CaptioningModel:
    torch.manual_seed(0)
    return CaptioningModel(ModelConfig(vocab_size=V, dropout=0.0, **TINY_MODEL)).eval()


def test_future_tokens_never_change_earlier_logits(model):
    images = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(4, V, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = torch.randint(4, V, (2, 4))
    with torch.no_grad():
        a, b = model(images, tokens), model(images, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_a_different_memory_changes_the_logits(model):
    tokens = torch.randint(4, V, (1, 8))
    with torch.no_grad():
        a = model(torch.randn(1, 3, 64, 64), tokens)
        b = model(torch.randn(1, 3, 64, 64), tokens)
    assert (a - b).abs().max() > 1e-4


def test_captions_sharing_one_image_equal_captions_with_copied_memory(model):
    """K captions per image read one memory; the result equals giving each caption its own copy."""
    B, K = 3, 4
    images = torch.randn(B, 3, 64, 64)
    tokens = torch.randint(4, V, (B * K, 9))
    with torch.no_grad():
        memory = model.encode(images)  # (B, M, D)
        shared = model.decoder(tokens, memory)
        copied = model.decoder(tokens, memory.repeat_interleave(K, dim=0))  # (B*K, M, D)
    torch.testing.assert_close(shared, copied, rtol=1e-5, atol=1e-5)


def test_attention_weights_path_equals_fused_kernel():
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=2).eval()
    x, memory = torch.randn(6, 5, 16), torch.randn(2, 7, 16)
    for context, causal in ((None, True), (memory, False)):
        fused = attention(x, context, is_causal=causal)
        explicit, weights = attention(x, context, is_causal=causal, need_weights=True)
        torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_cached_greedy_decoding_equals_recomputing_every_step(model):
    images, steps = torch.randn(3, 3, 64, 64), 12
    with torch.no_grad():
        memory = model.encode(images)
        tokens = torch.ones(3, 1, dtype=torch.long)  # (3, 1): the start token
        chosen = []
        for _ in range(steps):  # from scratch: the whole prefix at every step, whatever the rows write
            step = model.decoder(tokens, memory)[:, -1].log_softmax(-1)  # (3, V)
            token = step.argmax(-1)
            chosen.append(step.gather(1, token[:, None]).squeeze(1))
            tokens = torch.cat([tokens, token[:, None]], dim=1)
        tokens, chosen = tokens[:, 1:], torch.stack(chosen, dim=1)  # (3, steps) each
        # The end token is a word that the first caption writes, so that the captions end at different steps.
        eos = next(int(t) for t in tokens[0, 1:] if t > 1)
        spec = DecodeSpec(mode="greedy", min_length=0, max_length=steps)
        cached = decode(model.decoder, memory, spec, TokenIds(bos_id=1, eos_id=eos, pad_id=0))
    ends = [int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else steps for row in tokens]
    assert min(ends) < steps  # some caption ends early: its log-probability stops at its end token
    assert cached.lengths.tolist() == ends
    for row, length in enumerate(ends):
        assert cached.tokens[row, :length].tolist() == tokens[row, :length].tolist()
        assert (cached.tokens[row, length:] == 0).all()  # padding after the end
    counted = torch.arange(steps) < torch.tensor(ends)[:, None]  # (3, steps): each caption's own tokens
    torch.testing.assert_close(cached.log_probs, (chosen * counted).sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "grid", "prefix"), [("test_convnext", (2, 2), 0), ("test_vit", (4, 4), 1), ("test_resnet", (2, 2), 0)]
)
def test_encoder_turns_transformers_and_cnns_into_tokens(name, grid, prefix):
    encoder = ImageEncoder(name, image_size=64)
    tokens = encoder(torch.randn(2, 3, 64, 64))
    assert encoder.grid_size == grid and encoder.num_prefix_tokens == prefix
    assert tokens.shape == (2, prefix + grid[0] * grid[1], encoder.feature_dim)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_output_stride_16_gives_a_cnn_twice_the_grid_with_the_same_weights(name):
    default, finer = ImageEncoder(name, image_size=64), ImageEncoder(name, image_size=64, output_stride=16)
    assert (default.grid_size, finer.grid_size) == ((2, 2), (4, 4))
    assert finer(torch.randn(2, 3, 64, 64)).shape == (2, 16, finer.feature_dim)
    shapes = {name: tensor.shape for name, tensor in default.state_dict().items()}
    assert {name: tensor.shape for name, tensor in finer.state_dict().items()} == shapes


@pytest.mark.parametrize(
    ("name", "stride", "message"),
    [
        ("test_vit", 16, "'test_vit' has no output_stride option"),
        ("test_resnet", 12, "'test_resnet' cannot run at output stride 12"),
    ],
)
def test_an_output_stride_the_encoder_cannot_take_is_a_one_line_error(name, stride, message):
    with pytest.raises(UserError, match=rf"^model\.encoder_output_stride: timm model {message}") as error:
        ImageEncoder(name, image_size=64, output_stride=stride)
    assert "\n" not in str(error.value)


def test_an_image_size_the_encoder_cannot_take_is_a_one_line_error():
    with pytest.raises(UserError, match=r"^model\.image_size: test_vit cannot take 60 px images \(.*patch") as error:
        ImageEncoder("test_vit", image_size=60)  # not a multiple of its 16 px patches
    assert "\n" not in str(error.value)


def test_frozen_encoder_has_no_trainable_weights_and_stays_in_eval():
    encoder = ImageEncoder("test_convnext", freeze=True, image_size=64).train()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.trunk.training


def test_unknown_timm_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm model name 'resnet_5O'.*did you mean"):
        ImageEncoder("resnet_5O")


def test_missing_pretrained_weights_say_how_to_fix_it():
    with pytest.raises(RuntimeError, match="pretrained weights of timm model 'test_vit'.*pretrained: false"):
        ImageEncoder("test_vit", pretrained=True)


@pytest.mark.parametrize("name", ["test_convnext", "test_vit", "test_resnet"])
def test_every_trainable_weight_gets_a_gradient(name):
    """DDP fails on trainable weights outside the graph, such as the head norm that timm keeps in a ConvNeXt."""
    config = ModelConfig(vocab_size=V, **{**TINY_MODEL, "encoder": name})
    model = CaptioningModel(config)
    model(torch.randn(2, 3, 64, 64), torch.randint(4, V, (6, 8))).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_model_builds_with_gradients_disabled():
    with torch.no_grad():
        model = CaptioningModel(ModelConfig(vocab_size=V, **TINY_MODEL))
    assert all(p.requires_grad for p in model.decoder.parameters())
