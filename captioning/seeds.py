"""Random draws keyed by where they happen, so that a run's randomness does not depend on its history.

A training step's dropout (and SCST's sampling) draws from torch's generators seeded by the run's seed, the epoch, the
batch and the process (in runs with a seed, `seed_everything`); an image's crop and the captions picked for it by the
run's seed (else 0, like the sampler's order), the epoch and the image. A run killed and resumed from a checkpoint
therefore draws exactly what the uninterrupted run drew, whatever a validation or the loader workers consumed in
between, and on image folders the number of loader workers changes nothing (LitData deals its batches by worker).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SEED_VARIABLE = "PL_GLOBAL_SEED"  # where `seed_everything` leaves the run's seed, for every process


def default_seed() -> int:
    """The seed of `seed_everything` (Lightning exports it to every process), else 0 like `DistributedSampler`: all
    ranks must draw the same permutation, so the global RNG of each process is no use."""
    return int(os.environ.get(SEED_VARIABLE, 0))


def derived_seed(*keys: int) -> int:
    """A seed for the draws at `keys` (e.g. run seed, epoch, image), the same in every process; nearby keys give
    unrelated seeds. In [0, 2^63), of which torch's CPU generator reads the low 32 bits."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_torch(seed: int | None) -> Iterator[None]:
    """torch's CPU generator seeded with `seed` inside, and as it was after (None: left alone): a loader's draws
    with the main process's generator (no workers) leave its stream, which dropout reads, where it was."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it formats a stack trace when CUDA is off
        yield


def seed_generators(seed: int, device: torch.device) -> None:
    """Seeds torch's CPU generator and that of `device` (CUDA, MPS, XPU: the current one, which Lightning sets to the
    process's), which dropout reads."""
    torch.default_generator.manual_seed(seed)
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(backend, "manual_seed"):
        backend.manual_seed(seed)
