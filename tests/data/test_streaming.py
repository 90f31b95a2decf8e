"""Streamed data: `captioning prepare` packs a split into LitData chunks; training streams them, sharded over processes
by LitData, and a run killed mid-epoch resumes at the next batch from the loader state in its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from captioning.data.coco import ImageRecord, load_coco_captions
from captioning.data.datamodule import CaptionDataset
from captioning.data.shapes import annotation_path
from captioning.data.streaming import CaptionStreamingDataset, PackRecord, load_packed_records, streaming_loader
from captioning.data.transforms import build_transform
from tests.conftest import TINY_MODEL, TINY_SPLITS, last_validation_cider, run_cli, start_cli
from tests.data.conftest import fit_args
from tests.data.seen_images import read_batches


def test_packed_split_streams_the_folder_images_ids_and_captions(packed, shapes_root, one_thread):
    manifest = json.loads((packed / "train" / "manifest.json").read_text())
    assert manifest["count"] == TINY_SPLITS["train"] and manifest["image_size"] == 64
    transform = build_transform(TINY_MODEL["encoder"], TINY_MODEL["image_size"])
    records = load_coco_captions(annotation_path(shapes_root, "train"), shapes_root / "train")
    folder = {item["image_id"]: item for item in CaptionDataset(records, transform)}
    streamed = list(CaptionStreamingDataset(str(packed / "train"), transform))
    assert sorted(item["image_id"] for item in streamed) == sorted(folder)  # each image once
    for item in streamed:
        expected = folder[item["image_id"]]
        assert item["captions"] == expected["captions"]
        assert item["image"].shape == expected["image"].shape == (3, 64, 64)
        # JPEG at quality 90: close to the PNG, in normalised units where the pixel range spans about 4.4
        assert (item["image"] - expected["image"]).abs().mean() < 0.05
    # The references come from the captions file beside the chunks, scenes included (they ground shapes captions).
    packed_records = {r.image_id: r for r in load_packed_records(str(packed / "train"))}
    assert {i: (r.captions, r.scene) for i, r in packed_records.items()} == {
        r.image_id: (r.captions, r.scene) for r in records
    }


def test_unreadable_image_is_left_out_of_the_pack_with_a_warning(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert PackRecord(64)(ImageRecord(1, broken, ["a caption"])) is None


def test_stream_options_that_would_change_what_a_process_sees_are_refused():
    from captioning.data.datamodule import CaptionDataModule

    with pytest.raises(ValueError, match=r"data.stream_options.subsample: not one of cache_dir, max_cache_size"):
        CaptionDataModule(format="litdata", stream_options={"cache_dir": "/tmp/chunks", "subsample": 0.5})


def test_prepare_refuses_a_folder_that_is_not_empty(packed):
    from captioning.data import prepare

    with pytest.raises(ValueError, match=r"--out .*val: not an empty folder"):  # `captioning` prints it on one line
        prepare.main(["--dataset", "shapes", "--split", "val", "--out", str(packed / "val")])


@pytest.mark.slow
def test_two_processes_see_every_training_image_exactly_once_per_epoch(tmp_path, packed):
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    result = run_cli(*fit_args(packed, tmp_path / "runs", tmp_path / "seen", *ddp))
    assert result.returncode == 0, result.stderr[-3000:]
    batches = read_batches(tmp_path / "seen")
    assert {b["rank"] for b in batches} == {0, 1}
    all_ids = sorted(r.image_id for r in load_packed_records(str(packed / "train")))
    orders = []
    for epoch in (0, 1):
        ids = [i for b in batches if b["epoch"] == epoch for i in b["ids"]]
        assert sorted(ids) == all_ids  # every image, none twice, over both processes
        for rank in (0, 1):
            assert sum(len(b["ids"]) for b in batches if b["epoch"] == epoch and b["rank"] == rank) == 48
        orders.append([i for b in batches if b["epoch"] == epoch and b["rank"] == 0 for i in b["ids"]])
    assert orders[0] != orders[1]  # reshuffled each epoch


EPOCHS, KILL_BATCH = 3, 8  # 36 steps at a higher learning rate: enough for the tiny model to score
KILL_AT = 15  # the third batch of the second epoch (12 batches an epoch)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_at_the_next_batch_and_ends_as_an_uninterrupted_one(tmp_path, packed):
    seen, reference_seen = tmp_path / "seen", tmp_path / "reference-seen"
    every_2 = "--last_checkpoint.every_n_train_steps=2"  # last.ckpt at steps 2, 4, ...: killed at 15, it holds 14
    recipe = ["--model.warmup_steps=5", f"--trainer.max_epochs={EPOCHS}"]
    recipe += [f"--data.batch_size={KILL_BATCH}", "--model.optimizer.init_args.lr=0.005"]
    reference_args = fit_args(packed, tmp_path / "reference", reference_seen, every_2, *recipe)
    reference = start_cli(*reference_args, log=tmp_path / "reference.log")  # beside the killed run, on the other core
    killed = run_cli(*fit_args(packed, tmp_path / "runs", seen, every_2, *recipe, kill_after_step=KILL_AT))
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = read_batches(seen)
    assert [b["step"] for b in before] == list(range(1, KILL_AT + 1))
    (version,) = (tmp_path / "runs" / "shapes").iterdir()
    last = version / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved == KILL_AT - 1 and before[saved]["epoch"] == 1  # mid-way through the second epoch

    (seen / "rank0.jsonl").rename(tmp_path / "killed.jsonl")
    resumed = run_cli(*fit_args(packed, tmp_path / "runs", seen, every_2, *recipe, f"--ckpt_path={last}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_batches(seen)
    steps = EPOCHS * TINY_SPLITS["train"] // KILL_BATCH
    # the global step goes on from the checkpoint's
    assert [b["step"] for b in after] == list(range(saved + 1, steps + 1))
    assert after[0]["lr"] == before[saved]["lr"]  # the learning-rate schedule goes on without a jump
    assert after[0]["ids"] == before[saved]["ids"]  # the first batch after the checkpoint, in the same order
    all_ids = sorted(r.image_id for r in load_packed_records(str(packed / "train")))
    continued = before[:saved] + after
    for epoch in range(EPOCHS):  # the checkpointed batches and the remaining ones: each image once per epoch
        assert sorted(i for b in continued if b["epoch"] == epoch for i in b["ids"]) == all_ids
    end = torch.load(last, map_location="cpu", weights_only=True)  # the resumed run goes on in the same folder
    optimizer_steps = {int(s["step"]) for s in end["optimizer_states"][0]["state"].values()}
    assert end["global_step"] == steps and optimizer_steps == {steps}  # the optimizer's state was restored, not renewed

    # The same batches, learning rates and losses (dropout on, see seeds) as a run that was never killed, and the
    # same final score.
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = read_batches(reference_seen)
    for got, want in zip(continued, expected, strict=True):
        assert (got["step"], got["epoch"], got["ids"]) == (want["step"], want["epoch"], want["ids"])
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9), got["step"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]
    cider, reference_cider = last_validation_cider(tmp_path / "runs"), last_validation_cider(tmp_path / "reference")
    print(f"\nfinal val CIDEr-D on the packed split: resumed {cider:.4f}, uninterrupted {reference_cider:.4f}")
    assert reference_cider > 0
    assert cider == pytest.approx(reference_cider, rel=1e-6)


def test_a_streamed_image_is_cropped_by_seed_epoch_and_image_whatever_the_workers(packed, one_thread):
    transform = build_transform(TINY_MODEL["encoder"], TINY_MODEL["image_size"], train=True, augment=True)

    def epoch(num_workers: int, epochs: int = 1) -> dict:
        dataset = CaptionStreamingDataset(str(packed / "train"), transform, shuffle=True, drop_last=True, seed=3)
        loader = streaming_loader(dataset, 8, list, num_workers, train=True)  # batches as lists of items
        for _ in range(epochs):  # the last epoch's items
            items = {item["image_id"]: item for batch in loader for item in batch}
        return items

    alone, with_workers = epoch(0), epoch(2)
    assert alone.keys() == with_workers.keys() and len(alone) == TINY_SPLITS["train"]
    for image_id, item in alone.items():
        assert torch.equal(item["image"], with_workers[image_id]["image"]) and item["seed"] is not None
    second = epoch(0, epochs=2)
    assert all(not torch.equal(item["image"], second[i]["image"]) for i, item in alone.items())
