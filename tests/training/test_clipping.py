"""Clipping by norm in a Lightning fit: the module clips with the norm its non-finite guard already took (fused AdamW
takes the factor in its update), and trains the weights that Lightning's own clipping (torch's `clip_grad_norm_`)
gives, to rounding."""

from __future__ import annotations

import torch
from lightning import Trainer, seed_everything

from captioning.training.module import CaptioningModule
from captioning.training.nonfinite import NonFiniteGuard
from tests.conftest import TINY_MODEL, tiny_data


def _fit(shapes_root, clip: float | None) -> dict[str, torch.Tensor]:
    """Weights after 6 real steps of the tiny model at a learning rate high enough for clipping to act."""
    seed_everything(0, verbose=False)  # the model, and the loader's order and augmentation
    module = CaptioningModule(
        **TINY_MODEL, warmup_steps=1, dropout=0.0, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2)
    )
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=6, limit_val_batches=0, gradient_clip_val=clip, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root))
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


def test_the_module_clips_with_the_guards_norm_and_trains_what_lightnings_clipping_trains(
    shapes_root, one_thread, monkeypatch
):
    clips = []
    guard_clip = NonFiniteGuard.clip
    monkeypatch.setattr(NonFiniteGuard, "clip", lambda self, *args: clips.append(args) or guard_clip(self, *args))
    shared = _fit(shapes_root, clip=0.1)
    assert len(clips) == 6  # every step clipped with the guard's norm

    monkeypatch.setattr(CaptioningModule, "_clips_whole_gradients", lambda self, optimizer: False)
    lightning = _fit(shapes_root, clip=0.1)  # Lightning's own path: torch's clip_grad_norm_
    assert len(clips) == 6
    for name in shared:  # fused AdamW divides by the factor where torch's clip multiplies: an ulp apart per step
        torch.testing.assert_close(shared[name], lightning[name], rtol=1e-4, atol=1e-5)

    unclipped = _fit(shapes_root, clip=None)  # clipping did act: without it the weights differ far more
    assert any(not torch.allclose(shared[name], unclipped[name], rtol=1e-2, atol=1e-4) for name in shared)
