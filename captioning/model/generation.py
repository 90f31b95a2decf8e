"""Caption generation with the torch decoder: the torch stepper and array ops for `captioning.decoding`.

Every step feeds only the newest token: its self-attention reads the cached keys and values of the earlier ones,
and each layer's cross-attention projects the memory to K, V once per image. The beams (or samples) of an image
are consecutive rows that share that projection as a view (see `Attention`), so it is never copied or reordered.
Without the cache, every step recomputes the whole prefix: the baseline that tests and benchmarks compare with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from captioning.decoding import DecodeSpec, Generated, TokenIds, generate
from captioning.decoding.search import OnStep
from captioning.model.decoder import TextDecoder

_DTYPES = {"int": torch.long, "bool": torch.bool, "float": torch.float32}


class TorchOps:
    """`NumpyOps` (see `captioning.decoding.ops`) for torch tensors on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.sync_every = device, 1 if device.type == "cpu" else 8
        self.wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64

    def full(self, shape, value, kind: str) -> Tensor:
        return torch.full(shape, value, dtype=_DTYPES[kind], device=self.device)

    def arange(self, n: int) -> Tensor:
        return torch.arange(n, device=self.device)

    def where(self, condition: Tensor, a, b) -> Tensor:
        return torch.where(condition, a, b)

    def cat(self, tensors: list[Tensor], axis: int) -> Tensor:
        return torch.cat(tensors, dim=axis)

    def take(self, x: Tensor, index: Tensor, axis: int) -> Tensor:
        return x.gather(axis, index)

    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        index = x.topk(k, dim=-1).indices.sort(dim=-1).values  # then equal values by position, as `NumpyOps.topk`
        values, order = x.gather(-1, index).sort(dim=-1, descending=True, stable=True)
        return values, index.gather(-1, order)

    def float64(self, x: Tensor) -> Tensor:
        return x.to(self.wide)

    def exp(self, x: Tensor) -> Tensor:
        return x.exp()

    def uniform(self, shape, rng: np.random.Generator | None) -> Tensor:
        """From `rng` as `NumpyOps` draws (one copy to the device per search); without it, torch's own generator."""
        if rng is None:
            return torch.rand(shape, dtype=self.wide, device=self.device)
        return torch.from_numpy(rng.random(shape)).to(self.wide).to(self.device)


class TorchStepper:
    """Next-token log-probabilities of the R caption rows of B images: from KV caches, or recomputed from the prefix."""

    def __init__(self, decoder: TextDecoder, memory: Tensor, use_cache: bool = True) -> None:
        self.decoder, self.memory = decoder, memory
        self.ops, self.num_images, self.max_length = TorchOps(memory.device), memory.size(0), decoder.max_length
        self.caches = decoder.new_caches() if use_cache else None

    def __call__(self, history: Tensor) -> Tensor:
        """The start token and the t tokens so far (R, 1+t) -> log-probabilities of the next token (R, V)."""
        if self.caches is None:  # every position and the memory's K, V again at every step
            logits = self.decoder(history, self.memory)[:, -1]
        else:  # the newest token at position t; earlier keys and values come from the caches
            start = history.size(1) - 1
            logits = self.decoder(history[:, -1:], self.memory, self.caches, start=start)[:, -1]
        return logits.float().log_softmax(dim=-1)

    def reorder(self, rows: Tensor) -> None:
        if self.caches is not None:
            for self_cache, _cross_cache in self.caches:
                self_cache.select(rows)  # the cross-attention K, V (B, nh, M, hs) belong to images, not rows


@torch.no_grad()
def decode(
    decoder: TextDecoder,
    memory: Tensor,
    spec: DecodeSpec,
    ids: TokenIds,
    *,
    use_cache: bool = True,
    rng: np.random.Generator | None = None,
    on_step: OnStep | None = None,
) -> Generated:
    """Captions of the images whose memory (B, M, D) is given, as `spec` says; `use_cache=False` recomputes every
    position at every step (a baseline for tests and benchmarks); `ids`, `rng`, `on_step`: see `decoding.generate`."""
    return generate(TorchStepper(decoder, memory, use_cache), spec, ids, rng, on_step)
