"""How `captioning` reports errors, run as a user runs it: a user error (a bad checkpoint, images missing from a
test) is one line and a failing exit; anything unexpected keeps its traceback, followed by a one-line summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from lightning import Callback

from captioning.cli import is_user_error
from captioning.errors import UserError
from tests.conftest import COCO_MINI, ROOT, TINY_SPLITS, cli_env, require, run_cli, tiny_args
from tests.training.test_faults import Payload

pytestmark = pytest.mark.slow


class OutOfMemoryAtSetup(Callback):
    """Raises what CUDA raises when memory runs out: an error no user input explains."""

    def setup(self, trainer, module, stage) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_an_unexpected_error_keeps_its_traceback_then_a_one_line_summary(tmp_path, shapes_root):
    callback = f"--trainer.callbacks+={__name__}.OutOfMemoryAtSetup"
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, callback), cwd=ROOT)  # tests/ importable from ROOT
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "Traceback (most recent call last):" in lines, result.stderr[-3000:]
    assert any(line.startswith("torch.OutOfMemoryError: CUDA out of memory") for line in lines)
    (summary,) = _error_lines(result.stderr)
    assert summary.startswith("error: unexpected OutOfMemoryError in `captioning fit`: CUDA out of memory")
    assert lines.index(summary) > lines.index("Traceback (most recent call last):")


def _bad_checkpoints(folder, good) -> dict:
    """Checkpoints that must each be refused in one line: pickled code, truncated, and a torch file not ours."""
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    marker = folder / "the-payload-ran"
    paths = {kind: folder / f"{kind}.ckpt" for kind in ("code", "truncated", "foreign")}
    torch.save({**checkpoint, "payload": Payload(marker)}, paths["code"])
    paths["truncated"].write_bytes(good.read_bytes()[:4096])
    torch.save({"state_dict": checkpoint["state_dict"]}, paths["foreign"])
    return {**paths, "marker": marker}


MESSAGES = {"code": "refused and not run", "truncated": "not a readable checkpoint", "foreign": "not a captioning"}


def test_every_checkpoint_loader_refuses_a_bad_checkpoint_in_one_line(tmp_path, checkpoint):
    from captioning.checkpoint import load_checkpoint
    from captioning.inference import Captioner
    from captioning.training.checkpoint_io import AtomicCheckpointIO

    bad = _bad_checkpoints(tmp_path, checkpoint)
    # --model.init_from, `captioning caption` (and serve, export) and Lightning's --ckpt_path loader
    for load in (load_checkpoint, Captioner.from_checkpoint, AtomicCheckpointIO().load_checkpoint):
        for kind in ("code", "truncated"):
            with pytest.raises(UserError, match=MESSAGES[kind]) as error:
                load(bad[kind])
            assert "\n" not in str(error.value) and str(bad[kind]) in str(error.value)
    for load in (load_checkpoint, Captioner.from_checkpoint):  # Lightning reads it; the module's hook refuses it
        with pytest.raises(UserError, match=MESSAGES["foreign"]):
            load(bad["foreign"])
    assert not bad["marker"].exists()


@pytest.mark.parametrize(("kind", "command"), [("code", "test"), ("truncated", "caption")])
def test_a_bad_checkpoint_is_a_one_line_error_through_the_cli(tmp_path, shapes_root, checkpoint, kind, command):
    bad = _bad_checkpoints(tmp_path, checkpoint)
    if command == "caption":
        args = ["caption", "--checkpoint", str(bad[kind]), str(next((shapes_root / "test").iterdir()))]
    else:
        args = tiny_args(command, shapes_root, tmp_path / "run", f"--ckpt_path={bad[kind]}")
    result = run_cli(*args)
    assert result.returncode != 0
    (error,) = _error_lines(result.stderr)
    assert str(bad[kind]) in error and MESSAGES[kind] in error, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not bad["marker"].exists()


def test_test_fails_when_an_image_could_not_be_scored_unless_allowed(tmp_path, shapes_root, checkpoint):
    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    broken = sorted((data / "test").iterdir())[3]
    broken.write_bytes(b"not a png")
    result = run_cli(*tiny_args("test", data, tmp_path / "strict", f"--ckpt_path={checkpoint}"))
    assert result.returncode == 1
    (error,) = _error_lines(result.stderr)
    assert error.startswith("error: 1 of the 16 test images were not scored") and "--allow_missing_images" in error
    assert f"{broken.name}: cannot read image" in result.stderr
    (metrics,) = (tmp_path / "strict").glob("**/metrics.json")
    assert f"results: {metrics.parent}" in result.stdout.splitlines()  # where the scores of the others are
    counts = {"images_scored": TINY_SPLITS["test"] - 1, "images_in_split": TINY_SPLITS["test"]}
    scores = json.loads(metrics.read_text())
    assert scores.items() >= counts.items()
    assert "CIDEr" in scores and "METEOR" not in scores  # the test runs' `--model.test_metrics` (see tiny_args)

    allowed = run_cli(
        *tiny_args("test", data, tmp_path / "allowed", f"--ckpt_path={checkpoint}"), "--allow_missing_images=true"
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    (metrics,) = (tmp_path / "allowed").glob("**/metrics.json")
    assert json.loads(metrics.read_text()).items() >= counts.items()


def _raise_from_a_library() -> None:
    json.loads("{")


def test_only_our_own_input_checks_count_as_user_errors():
    from captioning.model.encoder import check_model_name
    from captioning.training.scst import leave_one_out_baseline

    def caught(call) -> BaseException:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - the error itself is under test
            return error
        raise AssertionError("no error")

    assert is_user_error(caught(lambda: check_model_name("resnet_5O")))  # a bad config value: our UserError
    assert is_user_error(UserError("bad value"))
    # a check of our own that a bug trips, raised by a `raise ValueError` of this package: not the user's to fix
    assert not is_user_error(caught(lambda: leave_one_out_baseline(torch.zeros(3), samples_per_image=1)))
    assert is_user_error(caught(lambda: open("/no/such/file")))
    assert not is_user_error(caught(_raise_from_a_library))  # a ValueError from inside the json module
    assert not is_user_error(caught(lambda: torch.ones(2).view(3)))  # a RuntimeError from torch


# A command, injected for the test, that builds cross-attention as the model does and runs it.
INJECTED_COMMAND = """
import sys, types
import torch
from captioning import cli
from captioning.model.attention import Attention

def main(argv):
    dim, heads, captions = (int(a) for a in argv)
    Attention(dim, heads)(torch.zeros(captions, 1, dim), context=torch.zeros(2, 4, dim))
    return 0

sys.modules["probe"] = types.ModuleType("probe")
sys.modules["probe"].main = main
cli.COMMANDS["probe"] = ("probe", "cross-attention from captions to the memory of 2 images")
sys.exit(cli.main(["probe", *sys.argv[1:]]))
"""


def test_an_internal_check_keeps_its_traceback_while_bad_input_is_one_line():
    def probe(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", INJECTED_COMMAND, *argv]
        return subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=300)

    # 3 captions over the memory of 2 images: a caller's bug that attention.py's own `raise ValueError` reports
    bug = probe("8", "2", "3")
    assert bug.returncode == 1
    assert "Traceback (most recent call last):" in bug.stderr
    assert "captioning/model/attention.py" in bug.stderr  # the frame that raised it
    assert _error_lines(bug.stderr) == [
        "error: unexpected ValueError in `captioning probe`: text batch 3 is not a multiple of the memory batch 2"
    ]
    # a width that the heads do not divide: a config value the user chose, a UserError
    bad_input = probe("8", "3", "2")
    assert bad_input.returncode == 1
    assert bad_input.stderr.strip().splitlines() == ["error: dim 8 is not divisible by num_heads 3"]


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [("serve", "litserve", "serve"), ("prepare", "litdata", "stream"), ("fit", "torch", "train")],
)
def test_a_command_whose_extra_is_not_installed_says_which_to_install(command, module, extra):
    args = {
        "serve": [command, "--checkpoint", "x.ckpt"],
        "prepare": [command, "--split", "test", "--out", "x"],
        "fit": [command, "--config", "configs/shapes.yaml"],  # on the base install: no torch
    }[command]
    probe = f"import sys; sys.modules[{module!r}] = None; from captioning.cli import main; sys.exit(main({args!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'error: `captioning {command}` needs {module}: pip install -e ".[{extra}]"'
    ]


def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, checkpoint):
    from captioning.checkpoint import load_checkpoint

    photo = min(require(COCO_MINI / "val2017").glob("*.jpg"))
    archive = tmp_path / "photos.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", photo.parent, photo.name)
    bare = tmp_path / "weights.pt"
    torch.save(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"], bare)
    other = tmp_path / "other.ckpt"
    torch.save({"epoch": 3, "state_dict": {}, "optimizer_states": []}, other)  # another program's Lightning run
    expected = {
        photo: "not a checkpoint (it looks like a JPEG image)",
        ROOT / "configs" / "shapes.yaml": "not a checkpoint (it looks like a .yaml text file)",
        archive: "not a checkpoint (it looks like a zip archive without the data.pkl that torch.save writes)",
        bare: "not a captioning checkpoint: it lacks 'captioning', 'state_dict' (it holds a bare state dict of",
        other: "not a captioning checkpoint: it lacks 'captioning' (it holds 3 keys such as 'epoch',",
    }
    for path, message in expected.items():
        with pytest.raises(UserError) as error:
            load_checkpoint(path)
        assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)

    result = run_cli("caption", "--checkpoint", str(photo), str(photo))  # the mistake as users make it
    assert result.returncode != 0
    assert _error_lines(result.stderr) == [f"error: {photo}: not a checkpoint (it looks like a JPEG image)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_config_on_a_machine_without_one_names_the_two_overrides(tmp_path):
    result = run_cli("fit", "--config", str(ROOT / "configs" / "coco.yaml"), cwd=tmp_path)
    assert result.returncode != 0
    assert _error_lines(result.stderr) == [
        "error: trainer.accelerator: 'gpu', but this machine has no GPU that torch can use; to run on the CPU, add "
        "--trainer.accelerator cpu --trainer.precision 32-true"
    ]
    assert not (tmp_path / "runs").exists()
