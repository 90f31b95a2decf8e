"""Shared fixtures: a tiny model config, a tiny shapes dataset, and a tiny checkpoint trained once per session."""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

os.environ["HF_HUB_OFFLINE"] = "1"  # a missing pretrained weight must fail at once, not retry for a minute
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
COCO_MINI = SHARED_DATA / "coco-val2017-mini"

TINY_MODEL = {"encoder": "test_convnext", "image_size": 64, "dim": 32, "depth": 2, "num_heads": 2, "max_length": 20}
TINY_SPLITS = {"train": 96, "val": 16, "test": 16}


def cli_env() -> dict[str, str]:
    # One thread: tiny models gain nothing from two, and lose several times over when the cores are busy.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return {**env, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `captioning ARGS` as a user would, in a subprocess."""
    command = [sys.executable, "-m", "captioning", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """Starts `captioning ARGS` in the background (to run beside another, or to kill), its stderr going to `log`."""
    with log.open("w") as stderr:  # a file, not a pipe that nobody reads while the run goes on
        command = [sys.executable, "-m", "captioning", *args]
        return subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=stderr)


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of `metrics.csv` of the one run under `run_dir`."""
    (version,) = (run_dir / "shapes").iterdir()  # a resumed run stays in its version_N
    return list(csv.DictReader((version / "metrics.csv").open()))


def last_validation_cider(run_dir: Path) -> float:
    return float([row["val/CIDEr"] for row in metrics_rows(run_dir) if row.get("val/CIDEr")][-1])


# Test runs score BLEU, ROUGE-L and CIDEr-D: METEOR's JVM costs 6-7 s a run. The main run (`trained_run`) and the first
# hour's first run score everything, METEOR included, as a user's would (ALL_METRICS in `extra`).
QUICK_METRICS = "--model.test_metrics=[BLEU,ROUGE_L,CIDEr]"
ALL_METRICS = "--model.test_metrics=null"


def tiny_args(command: str, data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """CLI arguments for `command` (fit: a few real training steps) with the tiny model on a tiny shapes set."""
    model = [f"--model.{key}={value}" for key, value in TINY_MODEL.items()]
    return [
        command,
        "--config",
        str(ROOT / "configs" / "shapes.yaml"),
        *model,
        f"--data.root={data_root}",
        f"--data.shapes_split_sizes={TINY_SPLITS}".replace("'", '"'),
        "--data.shapes_image_size=64",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=2",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        QUICK_METRICS,
        *extra,
    ]


def tiny_data(shapes_root: Path, **overrides):
    """The tiny shapes splits as a datamodule for the tiny model, for fits in this process."""
    from captioning.data.datamodule import CaptionDataModule

    settings = dict(
        root=str(shapes_root), shapes_split_sizes=TINY_SPLITS, shapes_image_size=64, encoder=TINY_MODEL["encoder"],
        image_size=64, max_length=TINY_MODEL["max_length"], min_word_frequency=1, batch_size=16, num_workers=0,
    )  # fmt: skip
    return CaptionDataModule(**{**settings, **overrides})


T = TypeVar("T")


def built_once(tmp_path_factory, name: str, build: Callable[[Path], T]) -> T:
    """What `build(folder)` returns, built once per test session and not once per pytest-xdist worker: the workers
    share the folder above their own temporary folders, the first to ask builds while the others wait on a lock, and
    all get the same result (the trained models of the session take a minute or more each)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, result = shared / name, shared / f"{name}.pickle"
    with FileLock(shared / f"{name}.lock"):
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed here left half-built
            folder.mkdir()
            result.write_bytes(pickle.dumps(build(folder)))
        return pickle.loads(result.read_bytes())


# The longest tests first: pytest-xdist hands the tests out in this order, and a test of minutes that starts last keeps
# the whole run waiting for it alone.
LONGEST_FIRST = ("tests/training/test_learning.py", "tests/test_notebooks.py", "tests/test_viz.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST_FIRST)  # a stable sort: else in order


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    from captioning.data.shapes import ensure_shapes

    root = tmp_path_factory.mktemp("shapes")
    ensure_shapes(root, image_size=64, split_sizes=TINY_SPLITS)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shapes_root) -> Path:
    """A run folder of the tiny model, fitted for two epochs through the CLI (and tested after fit)."""

    def fit(run_dir: Path) -> Path:
        result = run_cli(*tiny_args("fit", shapes_root, run_dir, ALL_METRICS))
        assert result.returncode == 0, result.stderr[-3000:]
        (version,) = (run_dir / "shapes").iterdir()
        assert f"run folder: {version}" in result.stdout.splitlines()  # fit says where its results are
        return version

    return built_once(tmp_path_factory, "run", fit)


@pytest.fixture(scope="session")
def checkpoint(trained_run) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and many times faster when other processes keep the cores busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny captioner trained directly in torch for 600 real steps on shapes (see tests.helpers)."""
    from tests.helpers import train_tiny_checkpoint

    return built_once(tmp_path_factory, "tiny-captioner", train_tiny_checkpoint)


@pytest.fixture(scope="session")
def viz_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of the viz model through the CLI, 200 and 300 steps (see tests.test_viz)."""
    from tests.test_viz import train_viz_runs

    return built_once(tmp_path_factory, "viz-runs", train_viz_runs)


@pytest.fixture(scope="session")
def captioner(tiny_checkpoint):
    """The tiny checkpoint as a `Captioner` on the CPU."""
    from captioning.inference import Captioner

    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def test_records(tiny_checkpoint) -> list:
    """The test split of the tiny checkpoint's shapes data."""
    from captioning.data.coco import load_coco_captions
    from captioning.data.shapes import annotation_path

    root = tiny_checkpoint.parent / "shapes"
    return load_coco_captions(annotation_path(root, "test"), root / "test")


@pytest.fixture(scope="session")
def test_images(test_records) -> list[Path]:
    return [record.path for record in test_records]
