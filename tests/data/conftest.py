"""Fixtures of the data tests: the tiny shapes splits packed into LitData chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_MODEL, TINY_SPLITS, run_cli


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
