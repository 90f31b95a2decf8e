"""Counts that hold under DDP: a streamed test split, sharded by LitData over two gloo processes, is counted whole
(`images_in_split`), so that the missing-images check compares the scored images with the split and not with one
process's share; the scores, computed on the first process, reach the other."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, TINY_MODEL, TINY_SPLITS, run_cli
from tests.data.conftest import streams


@pytest.mark.slow
def test_a_streamed_test_split_is_counted_whole_under_two_processes(tmp_path, packed, checkpoint):
    args = [
        "test", "--config", str(ROOT / "configs" / "shapes.yaml"),
        *[f"--model.{key}={value}" for key, value in TINY_MODEL.items()],
        "--data.format=litdata", streams(packed), "--data.num_workers=0", f"--ckpt_path={checkpoint}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
    ]  # fmt: skip
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = tmp_path.rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["images_in_split"] == metrics["images_scored"] == TINY_SPLITS["test"]  # not one process's 8
    assert metrics["CIDEr"] >= 0
