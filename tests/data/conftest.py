"""Fixtures of the data tests: the tiny shapes splits packed into LitData chunks, and `captioning fit` on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_MODEL, TINY_SPLITS, run_cli

BATCH = 16  # 96 training images: 6 batches on one process, 3 on each of two, none partial


@pytest.fixture(scope="session")
def packed(tmp_path_factory, shapes_root) -> Path:
    """The tiny shapes splits packed into `packed/{train,val,test}`: train through the CLI as a user runs it, the
    others in this process (the same `main`), to spare two interpreter start-ups."""
    from captioning.data import prepare

    folder = tmp_path_factory.mktemp("packed")
    config = folder / "data.yaml"
    data = {"dataset": "shapes", "root": str(shapes_root), "shapes_image_size": 64, "shapes_split_sizes": TINY_SPLITS}
    model = {"encoder": TINY_MODEL["encoder"], "image_size": TINY_MODEL["image_size"]}
    config.write_text(yaml.safe_dump({"model": model, "data": data}))
    result = run_cli("prepare", "--config", str(config), "--split", "train", "--out", str(folder / "train"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "packed 96 images of split 'train' at 64x64" in result.stdout
    for split in ("val", "test"):
        args = ["--config", str(config), "--split", split, "--out", str(folder / split), "--workers", "1"]
        assert prepare.main(args) == 0
    return folder


def streams(packed: Path | str) -> str:
    """The packed splits under a folder or an object-store URL, as `--data.streams`."""
    return "--data.streams=" + json.dumps({split: f"{packed}/{split}" for split in ("train", "val", "test")})


def fit_args(packed: Path | str, run_dir: Path, seen: Path, *extra: str, kill_after_step: int = 0) -> list[str]:
    """`captioning fit` of the tiny model on the packed splits, recording each training batch's image ids."""
    callback = {"class_path": "tests.data.seen_images.SeenImages", "init_args": {"folder": str(seen)}}
    callback["init_args"]["kill_after_step"] = kill_after_step
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "shapes.yaml"),
        *[f"--model.{key}={value}" for key, value in TINY_MODEL.items()],
        "--data.format=litdata",
        streams(packed),
        f"--data.batch_size={BATCH}",
        "--data.num_workers=0",
        "--trainer.max_epochs=2",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.callbacks={json.dumps([callback])}",
        "--test_after_fit=false",
        *extra,
    ]
