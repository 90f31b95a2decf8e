"""Self-critical training as a user runs it: `captioning fit --model.scst=true --model.init_from CKPT` in a subprocess
starts from the checkpoint's weights and tokenizer with a fresh optimizer, and logs what SCST is doing."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from tests.conftest import run_cli, tiny_args

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_init_from_loads_the_weights_and_architecture_but_not_the_optimizer(
    tmp_path, shapes_root, checkpoint, baseline
):
    start = torch.load(checkpoint, map_location="cpu", weights_only=True)
    args = tiny_args("fit", shapes_root, tmp_path, f"--model.init_from={checkpoint}", "--model.scst=true")
    args += [f"--model.scst_baseline={baseline}"]
    args += ["--model.dim=64", "--model.encoder=test_resnet"]  # the checkpoint's architecture wins
    # A learning rate of 0: the weights must stay exactly those of the checkpoint, while the optimizer steps.
    result = run_cli(*args, "--model.scst_samples=3", "--model.optimizer.init_args.lr=0", "--trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (tmp_path / "shapes").iterdir()
    end = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert end["captioning"] == start["captioning"]  # the checkpoint's architecture and tokenizer
    assert end["state_dict"].keys() == start["state_dict"].keys()
    assert all(torch.equal(end["state_dict"][k], start["state_dict"][k]) for k in start["state_dict"])
    steps = 96 // 16  # one epoch of the tiny training split
    assert start["global_step"] > steps and end["global_step"] == steps  # a fresh run, not a resumed one
    optimizer_steps = {int(s["step"]) for s in end["optimizer_states"][0]["state"].values()}
    assert optimizer_steps == {steps}
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"scst/reward", "scst/baseline", "scst/advantage_std", "scst/entropy", "scst/sample_length"} <= logged
    assert {"scst/reward_time_share", "val/CIDEr"} <= logged


def test_scst_trains_under_ddp_with_two_processes_on_the_first_ones_feature_cache(tmp_path, shapes_root, checkpoint):
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=1"]
    args = tiny_args("fit", shapes_root, tmp_path, f"--model.init_from={checkpoint}", "--model.scst=true", *ddp)
    # the first process fills the cache while the second waits for its key (on the long-timeout group)
    args += ["--model.freeze_encoder=true", f"--data.feature_cache={tmp_path / 'features'}"]
    result = run_cli(*args, "--model.scst_samples=3", "--test_after_fit=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "features" / "train" / "features.npy").is_file()
    (version,) = (tmp_path / "shapes").iterdir()
    end = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    start = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert end["global_step"] == 96 // 16 // 2  # each process took half of the batches
    assert any(not torch.equal(end["state_dict"][k], start["state_dict"][k]) for k in start["state_dict"])


def test_a_resumed_scst_run_needs_only_its_own_checkpoint(tmp_path, shapes_root, checkpoint):
    # A copy: the XE checkpoint is deleted before resuming, as a user cleaning up old runs would.
    xe = tmp_path / "xe.ckpt"
    shutil.copy(checkpoint, xe)
    runs = tmp_path / "runs"
    args = tiny_args("fit", shapes_root, runs, f"--model.init_from={xe}", "--model.scst=true", "--model.scst_samples=2")
    args += ["--test_after_fit=false", "--data.batch_size=32"]  # 3 steps an epoch
    first = run_cli(*args, "--trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    (version,) = (runs / "shapes").iterdir()
    last = version / "checkpoints" / "last.ckpt"
    xe.unlink()
    resumed = run_cli(*args, "--trainer.max_epochs=2", f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    end = torch.load(last, map_location="cpu", weights_only=True)
    assert end["global_step"] == 2 * 96 // 32 and end["epoch"] == 1  # the second epoch ran, in the same run
    assert end["hyper_parameters"]["init_from"] == str(xe)  # the run still records where it started from


def test_scst_freezes_the_encoder_of_an_unfrozen_checkpoint_and_trains_on_its_cached_tokens(
    tmp_path, shapes_root, checkpoint
):
    start = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert start["captioning"]["model_config"]["freeze_encoder"] is False  # cross-entropy trained the encoder too
    cache = tmp_path / "features"
    args = tiny_args("fit", shapes_root, tmp_path, f"--model.init_from={checkpoint}", "--model.scst=true")
    args += ["--model.freeze_encoder=true", f"--data.feature_cache={cache}", "--model.scst_samples=2"]
    result = run_cli(*args, "--trainer.max_epochs=1", "--test_after_fit=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (cache / "train" / "features.npy").is_file()
    (version,) = (tmp_path / "shapes").iterdir()
    end = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert end["captioning"]["model_config"]["freeze_encoder"] is True  # this run's choice, kept for a resume
    before, after = start["state_dict"], end["state_dict"]
    trunk = [k for k in before if k.startswith("model.encoder.trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.decoder."))
