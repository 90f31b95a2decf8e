"""A leaner training step: the LM head and the loss only at real positions, fused AdamW, and an encoder that finds its
never-reached weights without running the trunk."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from captioning.model import CaptioningModel, ModelConfig
from captioning.model import encoder as encoder_module
from captioning.model.encoder import ImageEncoder
from captioning.training.optim import use_fused_kernel
from tests.conftest import TINY_MODEL

V, PAD = 40, 0


def tiny_batch(model: CaptioningModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (2, 3, 64, 64) and tokens (6, 9): three captions per image of different lengths, padded."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, V, (6, 9), generator=generator)
    for row, length in enumerate([9, 3, 6, 2, 9, 5]):
        tokens[row, length:] = PAD
    return torch.randn(2, 3, 64, 64, generator=generator), tokens


@pytest.fixture(scope="module")
def model(one_thread) -> CaptioningModel:
    torch.manual_seed(0)
    return CaptioningModel(ModelConfig(vocab_size=V, dropout=0.0, **TINY_MODEL)).eval()


def test_logits_at_real_positions_equal_the_full_logits_there(model):
    images, tokens = tiny_batch(model)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    real = targets != PAD
    with torch.no_grad():
        full = model(images, inputs)  # (6, 8, V)
        lean = model(images, inputs, mask=real)  # (N, V)
    assert lean.shape == (int(real.sum()), V)
    torch.testing.assert_close(lean, full[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_and_gradients_at_real_positions_equal_the_ignore_index_loss(model, label_smoothing):
    images, tokens = tiny_batch(model)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    real = targets != PAD

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, params)

    full = model(images, inputs)
    old = F.cross_entropy(
        full.flatten(0, 1), targets.flatten(), ignore_index=PAD, label_smoothing=label_smoothing
    )  # padding targets count neither in the sum nor in the mean, also under label smoothing
    new = F.cross_entropy(model(images, inputs, mask=real), targets[real], label_smoothing=label_smoothing)
    torch.testing.assert_close(new, old)
    for new_grad, old_grad in zip(gradients(new), gradients(old), strict=True):
        torch.testing.assert_close(new_grad, old_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "size"), [("test_convnext", 64), ("test_vit2", 64), ("test_vit3", 64)])
def test_encoder_freezes_the_same_weights_as_a_real_backward_pass(name, size, one_thread):
    """The meta-device trace must find exactly the weights that autograd finds without a gradient."""
    trunk = encoder_module.create_trunk(name, False, size).eval()
    features = trunk.forward_features(torch.zeros(1, 3, size, size))
    params = dict(trunk.named_parameters())
    grads = torch.autograd.grad(features.sum(), list(params.values()), allow_unused=True)
    expected = {n for n, g in zip(params, grads, strict=True) if g is None}
    encoder = ImageEncoder(name, image_size=size)
    frozen = {n for n, p in encoder.trunk.named_parameters() if not p.requires_grad}
    assert frozen == expected and expected  # each of these timm models keeps some unused weights
    assert encoder.trunk.training  # the trace leaves the trunk's mode as it was


def test_encoder_falls_back_to_a_real_pass_when_the_trunk_cannot_run_on_meta(monkeypatch, one_thread):
    def refuse(trunk, size):
        raise NotImplementedError("no meta kernel")  # as an op without a meta implementation would

    reference = ImageEncoder("test_convnext", image_size=64)
    monkeypatch.setattr(encoder_module, "_meta_forward", refuse)
    encoder = ImageEncoder("test_convnext", image_size=64)
    assert (encoder.num_tokens, encoder.feature_dim, encoder.grid_size) == (
        reference.num_tokens,
        reference.feature_dim,
        reference.grid_size,
    )
    assert {n for n, p in encoder.named_parameters() if not p.requires_grad} == {
        n for n, p in reference.named_parameters() if not p.requires_grad
    }


def test_fused_adamw_takes_the_same_steps_as_the_default(one_thread):
    torch.manual_seed(0)
    default = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)
    )
    fused = copy.deepcopy(default)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (default, fused)]
    assert use_fused_kernel(optimizers[1]) and optimizers[1].param_groups[0]["fused"]
    inputs, targets = torch.randn(64, 16), torch.randn(64, 4)
    for _ in range(5):
        for model, optimizer in zip((default, fused), optimizers, strict=True):
            F.mse_loss(model(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(default.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_explicit_optimizer_setting_is_left_alone():
    param = torch.nn.Parameter(torch.zeros(3))
    assert not use_fused_kernel(torch.optim.AdamW([param], foreach=True))
    assert not use_fused_kernel(torch.optim.AdamW([param], fused=False))
    assert not use_fused_kernel(torch.optim.RMSprop([param]))  # no fused kernel to switch to
