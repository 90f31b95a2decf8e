"""An exponential moving average (EMA) of the model's weights, the copy that validation, test and checkpoints use.

Polyak averaging as timm's `ModelEmaV3` and most captioning codebases keep it: after every optimizer step each
weight moves a share 1 - decay towards the trained one. The decay warms up as (1 + n) / (10 + n) over the first
updates, so that the average does not remember the random initialisation (TensorFlow's ExponentialMovingAverage
with num_updates). Buffers (BatchNorm statistics) are copied, not averaged. The update reads nothing back from the
device: the step count is a tensor, and the weights move in three foreach kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from captioning.errors import UserError


class WeightAverage(nn.Module):
    """Holds `model`'s averaged copy; its state (weights and update count) goes into checkpoints with the module.

    Args:
        model: the trained model; copied once here.
        decay: the weight of the old average at each update, at most (e.g. 0.995: about the last 200 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise UserError(f"model.ema_decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average towards `model`'s current weights (call after each optimizer step)."""
        self.updates += 1
        decay = ((1 + self.updates) / (10 + self.updates)).clamp(max=self.decay)
        averaged = [p for p in self.model.parameters() if p.is_floating_point()]
        trained = [p.detach() for p in model.parameters() if p.is_floating_point()]
        # avg = trained + decay * (avg - trained); foreach lerp would read a tensor weight back to the host
        torch._foreach_sub_(averaged, trained)
        torch._foreach_mul_(averaged, decay)
        torch._foreach_add_(averaged, trained)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
