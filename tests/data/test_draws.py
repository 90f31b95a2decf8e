"""The training loader's random draws (crops, the captions picked per image) are keyed by seed, epoch and image: the
same with or without loader workers, and a loader restored mid-epoch hands out exactly what the uninterrupted one
would have (see `captioning.seeds`)."""

from __future__ import annotations

import pytest
import torch

from captioning.seeds import derived_seed, seeded_torch
from tests.conftest import tiny_data

SETTINGS = dict(augment=True, flip=True, captions_per_image=3, batch_size=8)  # crops, mirrors, 3 of 5 captions


def train_loader(shapes_root, num_workers: int = 0):
    data = tiny_data(shapes_root, num_workers=num_workers, **SETTINGS)
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.set_epoch(2)
    return loader


def batches(loader, count: int | None = None) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a["image_ids"] == b["image_ids"]
        assert torch.equal(a["images"], b["images"])
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["targets"], b["targets"])


def test_crops_and_caption_picks_do_not_depend_on_the_loader_workers(shapes_root, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    alone = batches(train_loader(shapes_root))
    assert_same(batches(train_loader(shapes_root, num_workers=2)), alone)
    # and they are draws: another epoch crops and picks differently
    loader = train_loader(shapes_root)
    loader.sampler.set_epoch(3)
    again = {b["image_ids"][i]: b["images"][i] for b in batches(loader) for i in range(len(b["image_ids"]))}
    first = {b["image_ids"][i]: b["images"][i] for b in alone for i in range(len(b["image_ids"]))}
    assert all(not torch.equal(again[k], first[k]) for k in first)  # each crop keyed by epoch, not only its mirror


def test_a_loader_restored_mid_epoch_hands_out_what_the_uninterrupted_one_would(shapes_root, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    expected = batches(train_loader(shapes_root))
    killed = train_loader(shapes_root, num_workers=2)
    assert_same(batches(killed, 4), expected[:4])
    state = killed.state_dict()
    torch.manual_seed(123)  # whatever the process drew meanwhile
    resumed = train_loader(shapes_root)
    resumed.load_state_dict(state)
    assert_same(batches(resumed), expected[4:])


def test_the_main_process_generator_is_left_where_it_was():
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    with seeded_torch(derived_seed(1, 2, 3)):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), want) and not torch.equal(inside, want)


@pytest.mark.parametrize("keys", [(0, 0, 0), (1, 0, 5), (1, 5, 0)])
def test_derived_seeds_differ_between_nearby_keys(keys):
    seeds = {derived_seed(*keys), derived_seed(keys[0], keys[1], keys[2] + 1), derived_seed(keys[0] + 1, *keys[1:])}
    assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)
