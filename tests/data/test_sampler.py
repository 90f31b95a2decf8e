"""The resumable sampler and loader of the folder-of-images path: seeded epochs, DDP shards, mid-epoch resume."""

from __future__ import annotations

import pytest
from lightning import Trainer
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DistributedSampler

from captioning.data.sampler import ResumableDataLoader, ResumableSampler

SIZE = 40


def loader(num_workers: int = 0, **sampler_args) -> ResumableDataLoader:
    dataset = list(range(SIZE))
    return ResumableDataLoader(
        dataset, ResumableSampler(dataset, seed=7, **sampler_args), batch_size=4, num_workers=num_workers
    )


def batches(data: ResumableDataLoader, count: int | None = None) -> list[list[int]]:
    out = []
    for batch in data:
        out.append(batch.tolist())
        if len(out) == count:
            break
    return out


def test_each_epoch_is_a_new_seeded_permutation_of_the_whole_set():
    sampler = ResumableSampler(range(SIZE), seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(SIZE)) and first != second
    again = ResumableSampler(range(SIZE), seed=7)
    again.set_epoch(1)
    assert list(again) == second


def test_shards_are_those_of_torchs_distributed_sampler():
    for rank in range(3):
        ours, torchs = (
            cls(range(SIZE), num_replicas=3, rank=rank, seed=7) for cls in (ResumableSampler, DistributedSampler)
        )
        ours.set_epoch(2), torchs.set_epoch(2)
        assert list(ours) == list(torchs) and len(ours) == len(torchs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_restored_from_its_state_continues_at_the_next_batch(num_workers):
    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(3)
    expected = batches(uninterrupted)
    killed = loader(num_workers)  # workers prefetch ahead: the state must count the batches handed out, not drawn
    killed.sampler.set_epoch(3)
    assert batches(killed, 3) == expected[:3]
    state = killed.state_dict()
    resumed = loader(num_workers)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # as Lightning does at the start of the resumed epoch
    assert len(resumed) == len(expected)  # the whole epoch: Lightning adds the batches already done
    assert batches(resumed) == expected[3:]
    resumed.sampler.set_epoch(4)
    assert len(batches(resumed)) == len(expected)  # the next epoch is whole again


def test_a_resumed_epoch_continues_with_another_number_of_processes():
    expected = [i for batch in batches(loader()) for i in batch]
    two = [loader(num_replicas=2, rank=rank) for rank in range(2)]
    seen = [batches(data, 2) for data in two]  # each rank trained 2 batches of 4: the first 16 of the permutation
    assert sorted(i for rank in seen for batch in rank for i in batch) == sorted(expected[:16])
    one = loader()
    one.load_state_dict(two[0].state_dict())
    assert [i for batch in batches(one) for i in batch] == expected[16:]


def test_a_state_from_another_training_set_is_refused():
    state = loader().state_dict()
    other = list(range(SIZE + 1))
    with pytest.raises(ValueError, match=f"training set has {SIZE + 1} images.*saved over {SIZE}"):
        ResumableDataLoader(other, ResumableSampler(other), batch_size=4).load_state_dict(state)


@pytest.mark.parametrize("size", [SIZE, SIZE + 2])  # every batch whole, or a last one of 2
def test_a_finished_epoch_resumes_on_another_training_set_at_the_next_epoch(size):
    dataset = list(range(size))
    done = ResumableDataLoader(dataset, ResumableSampler(dataset, seed=7), batch_size=4, drop_last=True)
    done.sampler.set_epoch(3)
    batches(done)  # the epoch to its end, its last partial batch dropped
    other = list(range(SIZE + 5))
    resumed = ResumableDataLoader(other, ResumableSampler(other, seed=7), batch_size=4)
    resumed.load_state_dict(done.state_dict())
    resumed.sampler.set_epoch(4)  # Lightning goes on with the next epoch
    assert sorted(i for batch in batches(resumed) for i in batch) == other


def test_lightning_keeps_the_sampler_under_ddp_and_sees_a_resumable_loader():
    data = loader(num_replicas=2, rank=0)
    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    assert (
        trainer._data_connector._prepare_dataloader(data, shuffle=True, mode=RunningStage.TRAINING) is data
    )  # not wrapped
    assert isinstance(data, _Stateful)  # Lightning saves its state and does not warn that it cannot resume
