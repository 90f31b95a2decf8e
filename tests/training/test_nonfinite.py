"""The non-finite guard on the device: a fused optimizer skips a NaN or inf step without a host read, a large finite
gradient is no false alarm, the counters survive a checkpoint, an unfused optimizer still gets a host verdict, and
clipping by norm reuses the guard's norm with the same result as torch's `clip_grad_norm_`."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils._python_dispatch import TorchDispatchMode

from captioning.errors import TrainingDiverged
from captioning.training.module import CaptioningModule
from captioning.training.nonfinite import NonFiniteGuard
from tests.conftest import TINY_MODEL, tiny_data
from tests.training.audit import OpCounter


def _model_and_optimizer(fused: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)


def _step(model, optimizer, guard: NonFiniteGuard, inputs: torch.Tensor) -> torch.Tensor:
    """One training step as Lightning runs it: loss, backward, the guard, clipping, the optimizer step."""
    loss = model(inputs).square().mean()
    guard.observe_loss(loss)
    loss.backward()
    guard.check(optimizer)
    guard.clip(optimizer, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss


def test_a_fused_optimizer_skips_a_nan_step_on_the_device_and_trains_after_it(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    _step(model, optimizer, guard, torch.randn(4, 8))  # the optimizer's state exists from here on
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    counter = OpCounter()
    with counter:
        _step(model, optimizer, guard, torch.full((4, 8), float("nan")))
    assert counter.syncs == 0  # nothing read back on the host
    weights, state = model.state_dict(), optimizer.state_dict()
    assert all(torch.equal(before[0][k], v) for k, v in weights.items())  # no update, no decay
    for key, moments in state["state"].items():  # Adam's moments and step count untouched too
        assert all(torch.equal(before[1]["state"][key][name], value) for name, value in moments.items())
    assert (guard.skipped, guard.in_a_row) == (1, 1)
    _step(model, optimizer, guard, torch.randn(4, 8))
    assert (guard.skipped, guard.in_a_row) == (1, 0)
    assert any(not torch.equal(before[0][k], v) for k, v in model.state_dict().items())


def test_an_inf_loss_alone_is_enough_to_skip_the_step(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    guard.observe_loss(torch.tensor(float("inf")))  # e.g. one micro-batch of an accumulated step
    model(torch.randn(4, 8)).sum().backward()
    guard.check(optimizer)
    assert guard.skipped == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_large_finite_gradient_is_no_false_alarm(dtype, one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    model.to(dtype)  # the same parameters, as a half-precision run holds them
    for p in model.parameters():  # 1e4: a float16 norm of these would overflow at 65504; the guard's is float32
        p.grad = torch.full_like(p, 1e4 if dtype == torch.float16 else 1e17)
    guard.check(optimizer)
    assert guard.skipped == 0


def test_a_gradient_whose_squares_overflow_float32_is_skipped_as_clipping_could_not_scale_it(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e30)
    reference = [_as_parameter(p.grad.clone()) for p in model.parameters()]
    torch.nn.utils.clip_grad_norm_(reference, 1.0)  # torch's clip: a norm of inf, gradients scaled to 0
    assert all(not r.grad.any() for r in reference)
    guard.check(optimizer)
    assert guard.skipped == 1


def test_clipping_reuses_the_guards_norm_and_matches_torch_bit_for_bit(one_thread):
    model, optimizer = _model_and_optimizer(fused=False)
    guard = NonFiniteGuard(limit=3)
    model(torch.randn(4, 8) * 100).square().mean().backward()  # a gradient norm far above 1
    expected = [p.grad.clone() for p in model.parameters()]
    torch.nn.utils.clip_grad_norm_([_as_parameter(g) for g in expected], 1.0)
    guard.check(optimizer)
    with _OpNames() as ops:
        guard.clip(optimizer, 1.0)
    assert "_foreach_mul_" in ops.names and "_foreach_norm" not in ops.names  # the norm is `check`'s
    assert all(torch.equal(p.grad, e) for p, e in zip(model.parameters(), expected, strict=True))
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])) < 1.0 + 1e-5


def test_a_fused_optimizer_takes_the_clipping_factor_in_its_update_without_a_pass_over_the_gradients(one_thread):
    model, optimizer = _model_and_optimizer()
    reference = copy.deepcopy(model)  # clipped by torch, then the same fused AdamW
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    guard = NonFiniteGuard(limit=3)
    inputs = torch.randn(4, 8) * 100  # a gradient norm far above 1
    for _ in range(3):
        reference(inputs).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        reference_optimizer.step()
        reference_optimizer.zero_grad()
        model(inputs).square().mean().backward()
        guard.check(optimizer)
        grads = [p.grad.clone() for p in model.parameters()]
        with _OpNames() as ops:
            guard.clip(optimizer, 1.0)
        assert not any(name.startswith("_foreach") for name in ops.names)  # a few scalar ops, whatever the model
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))  # left as they are
        assert optimizer.grad_scale > 10  # the clipping acts: the update divides the gradients by it
        optimizer.step()
        optimizer.zero_grad()
    for p, r in zip(model.parameters(), reference.parameters(), strict=True):  # divided, not multiplied: 1 ulp apart
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


class _OpNames(TorchDispatchMode):
    """The names of the aten calls made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _as_parameter(grad: torch.Tensor) -> torch.Tensor:
    """A stand-in parameter whose .grad is `grad` (clipped in place by torch's clip)."""
    param = torch.zeros_like(grad, requires_grad=True)
    param.grad = grad
    return param


def test_the_run_in_a_row_survives_a_checkpoint_and_stops_the_resumed_run_at_the_limit(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    for _ in range(2):
        _step(model, optimizer, guard, torch.full((4, 8), float("nan")))
    guard.check_limit(step=2)  # two in a row: under the limit
    resumed = NonFiniteGuard(limit=3)
    resumed.load_state_dict(guard.state_dict())
    assert (resumed.skipped, resumed.in_a_row, resumed.newly_skipped()) == (2, 2, 0)
    _step(model, optimizer, resumed, torch.full((4, 8), float("nan")))
    assert resumed.newly_skipped() == 1
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row"):
        resumed.check_limit(step=3)


def test_a_run_that_reached_the_limit_and_recovered_before_the_read_still_stops(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=2)
    for inputs in (torch.full((4, 8), float("nan")),) * 2 + (torch.randn(4, 8),):
        _step(model, optimizer, guard, inputs)
    assert guard.in_a_row == 0
    with pytest.raises(TrainingDiverged):
        guard.check_limit(step=3)  # read at a logging step after the streak ended


def test_an_unfused_optimizer_gets_the_verdict_on_the_host_and_its_gradients_dropped(one_thread):
    model, optimizer = _model_and_optimizer(fused=False)
    guard = NonFiniteGuard(limit=3)
    model(torch.full((4, 8), float("nan"))).sum().backward()
    assert guard.check(optimizer) is True
    assert all(p.grad is None for p in model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    assert guard.check(optimizer) is False


def test_under_a_grad_scaler_an_overflowing_gradient_is_left_to_it_and_a_nan_loss_still_counts(one_thread):
    model, optimizer = _model_and_optimizer()
    guard = NonFiniteGuard(limit=3)
    loss = model(torch.randn(4, 8)).sum() * 2.0**40  # finite, as the scaler hands it to backward
    guard.observe_loss(loss)
    loss.backward()
    model[0].weight.grad[0, 0] = float("inf")  # the scaled gradient overflowed float16
    guard.check(optimizer, scaled=True)
    assert guard.skipped == 0  # the scaler skips that step itself

    guard.observe_loss(torch.tensor(float("nan")))
    guard.check(optimizer, scaled=True)
    assert guard.skipped == 1


@pytest.mark.parametrize("encoder", ["test_convnext", "test_resnet"])  # a LayerNorm trunk and a BatchNorm one
def test_float16_mixed_precision_trains_through_its_scalers_first_overflows_with_clipping(
    encoder, shapes_root, one_thread
):
    """A GradScaler starting at 2^40 overflows at each of its first 22 steps while it halves its scale down to 2^18:
    that is its search for a scale, skipped by the scaler, not 22 steps of divergence (which used to stop the run at
    the 20-in-a-row limit). On CPU through an explicit plugin: Lightning takes "16-mixed" on GPUs only."""
    module = CaptioningModule(**{**TINY_MODEL, "encoder": encoder}, warmup_steps=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    start = Snapshot()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=30, limit_val_batches=0, gradient_clip_val=1.0, logger=False,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[start], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root))
    assert trainer.global_step == 30 and module.nonfinite.skipped == 0
    assert scaler.get_scale() <= 2.0**20  # it found its range
    after = module.model.state_dict()
    assert any(not torch.equal(weight, after[name]) for name, weight in start.weights.items())  # the last steps trained


class Snapshot(Callback):
    """The model's weights when training starts."""

    def on_train_start(self, trainer, module) -> None:
        self.weights = copy.deepcopy(module.model.state_dict())


def test_a_float64_run_takes_its_fused_steps(shapes_root, one_thread):
    """The guard's flag goes to the fused kernel as float32, which it reads whatever the parameters' precision."""
    module = CaptioningModule(**TINY_MODEL, warmup_steps=1)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, precision="64-true", gradient_clip_val=1.0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root))
    assert trainer.global_step == 2 and module.nonfinite.skipped == 0
    assert next(module.model.parameters()).dtype == torch.float64
