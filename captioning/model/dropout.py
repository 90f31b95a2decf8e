"""Dropout whose CPU masks come from random integers, 15 bits an element, drawn four to a 64-bit word.

torch's CPU dropout draws each element's Bernoulli from a double (`bernoulli_`, about 6 ns an element), and compiled
graphs from a Philox generator set up anew for every element: dropout 0.1 cost the decoder of `train_bench.py` about
65 of its 400 ms (forward and backward). Four 15-bit integers from one 64-bit draw make the same mask about five times
as fast (with its forward and backward, about twice). The keep rate is quantised to 1/32768 and the kept values are
scaled by its exact inverse, so the expectation is unchanged. The draw is a custom op, opaque to torch.compile, so
compiled graphs take the same masks without a break. On GPUs torch's fused dropout runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 15  # each 16-bit lane keeps 15 random bits (a 64-bit random_ has 63)


def random_lanes(shape: list[int]) -> Tensor:
    """int16 integers uniform in [0, 2^15) of `shape`, four from each 64-bit draw of torch's CPU generator."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # uniform in [0, 2^63)
    return words.view(torch.int16)[:n].bitwise_and_(_LEVELS - 1).view(shape)


# The same draw as one opaque op for compiled graphs, which would trace its int64 -> int16 view and in-place ops apart.
_random_lanes_op = torch.library.custom_op(
    "captioning::random_lanes", random_lanes, mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
_random_lanes_op.register_fake(lambda shape: torch.empty(shape, dtype=torch.int16))


def draws_integer_masks(x: Tensor, p: float) -> bool:
    """Whether `dropout(x, p)` draws its own masks: on CPU, for 0 < p < 1, in float32 or float64. A mask in bfloat16
    would round the scale 1/(1-p) once for all elements (1.111 to 1.109 at p = 0.1), where torch rounds each product."""
    return 0.0 < p < 1.0 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """`F.dropout(x, p, training)`, with masks drawn from integers where `draws_integer_masks`."""
    if not training or p == 0.0:
        return x
    if not draws_integer_masks(x, p):
        return F.dropout(x, p, True)
    dropped = round(p * _LEVELS)  # lanes below this value drop their element
    draw = _random_lanes_op if torch.compiler.is_compiling() else random_lanes  # the op's call costs ~0.1 ms eager
    keep = (draw(list(x.shape)) >= dropped).to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
    return x * keep


class Dropout(nn.Dropout):
    """`nn.Dropout` with the masks of `dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
