"""Resumable sampling for the folder-of-images path: a seeded permutation per epoch, sharded across processes, and a
loader that counts the samples it delivered, so that a run resumed from a mid-epoch checkpoint continues at the next
batch of the same epoch, neither replaying nor skipping one.

The sampler is a `DistributedSampler` (strided shards, as under DDP), so Lightning keeps it instead of wrapping it
(`use_distributed_sampler`). Lightning saves a train loader's `state_dict` in the fit loop, but restores it only into a
loader built after the checkpoint was read, and `trainer.estimated_stepping_batches` (the LR schedule's length, in
`configure_optimizers`) builds it earlier; the datamodule therefore carries the loader's state as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from captioning.errors import UserError
from captioning.seeds import default_seed, derived_seed


class Draw(NamedTuple):
    """A dataset index with the seed of its random draws (crop, captions) in this epoch (`ResumableSampler`)."""

    index: int
    seed: int

    @staticmethod
    def split(key: int | Draw) -> tuple[int, int | None]:
        """A dataset key -> (index, seed of its draws), the seed None for a bare index (evaluation)."""
        return (key.index, key.seed) if isinstance(key, Draw) else (key, None)


class ResumableSampler(DistributedSampler):
    """One seeded permutation of the dataset per epoch, this process's strided shard of it, from a resume point.

    `consumed` counts the samples of this epoch's shard that training has received; the loader advances it (the
    sampler itself runs ahead of training, by the batches that worker processes prefetch).

    Args:
        dataset: anything with a length.
        shuffle: a new permutation each epoch (`set_epoch`); otherwise the dataset order.
        seed: the permutation of epoch e is drawn with seed + e, the same in every process.
        num_replicas: number of processes; None for the size of the initialized process group, else 1.
        rank: this process's index; None for its rank in the process group, else 0.
        drop_last: drop the tail that does not divide evenly across processes instead of padding it.
        views: the views of an image to draw from, per epoch and image: view v of image i comes as index
            i + v * N (N images; `CaptionDataset` reads v as mirrors), so a resumed run sees the same views as the run
            it continues. (0,): the images as they are.
        draws: yield `Draw`s, each index with the seed of its random draws in this epoch (derived from the seed,
            the epoch and the index, see `captioning.seeds`), instead of bare indices.
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        views: tuple[int, ...] = (0,),
        draws: bool = False,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else dist.get_world_size() if distributed else 1
        rank = rank if rank is not None else dist.get_rank() if distributed else 0
        seed = default_seed() if seed is None else seed
        super().__init__(dataset, num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.consumed = 0
        self.views = tuple(views)
        self.draws = draws

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.consumed = 0  # a new epoch starts at its beginning; the same one (a resume) keeps its position
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int | Draw]:
        # A finished epoch that is iterated again (no set_epoch in between) starts over, as a DataLoader would.
        self.consumed = self.consumed if self.consumed < self.num_samples else 0
        indices = itertools.islice(super().__iter__(), self.consumed, None)
        if self.views != (0,):
            size, views = len(self.dataset), torch.tensor(self.views)
            generator = torch.Generator().manual_seed(self.seed + self.epoch + 7919)  # not the permutation's stream
            picked = torch.randint(len(views), (size,), generator=generator)
            indices = (index + size * int(views[picked[index]]) for index in indices)
        if self.draws:
            indices = (Draw(index, derived_seed(self.seed, self.epoch, index)) for index in indices)
        yield from indices

    def __len__(self) -> int:
        # The whole epoch's shard, also when resumed: Lightning counts the batches already done on top of this.
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        """The epoch, its seed and how far into it training got, counted over all processes."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_size": len(self.dataset),
            "samples_seen": self.consumed * self.num_replicas,
            "finished": self.consumed >= self.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the saved epoch at the next unseen sample, also with another number of processes: the first
        k * R samples of a permutation are exactly the first k of each of R strided shards. A finished epoch is left
        behind on any data: the resumed run starts the next one."""
        if state.get("finished") or state["samples_seen"] >= state["dataset_size"]:
            self.epoch, self.seed, self.shuffle = state["epoch"], state["seed"], state["shuffle"]
            self.consumed = self.num_samples
            return
        if state["dataset_size"] != len(self.dataset):
            raise UserError(
                f"cannot resume mid-epoch: the training set has {len(self.dataset)} images, the checkpoint's "
                f"sampler was saved over {state['dataset_size']}; resume with the same training data"
            )
        self.epoch, self.seed, self.shuffle = state["epoch"], state["seed"], state["shuffle"]
        self.consumed = min(state["samples_seen"] // self.num_replicas, self.num_samples)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` whose state says where the epoch stands: the samples in the batches it
    has handed out, not those its workers have prefetched."""

    sampler: ResumableSampler

    def __init__(self, dataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        # A generator: workers start, and the sampler draws its permutation, at the first batch. The trainer asks
        # for an iterator before it restores a checkpoint, and takes the first batch after.
        for batch in super().__iter__():
            self.sampler.consumed = min(self.sampler.consumed + self.batch_size, self.sampler.num_samples)
            yield batch
        self.sampler.consumed = self.sampler.num_samples  # to its end, also past a last batch that was dropped

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
