"""What a new user meets first: one folder per run however it is resumed or tested, a log file a person can read,
files with the usual permissions, and a command line that starts at once and lists everything it can do."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ALL_METRICS, run_cli, tiny_args


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, shapes_root):
    """A run fitted for one epoch, resumed from its last.ckpt for a second, then tested on its best.ckpt; all with
    stdout redirected (as in a log file or CI) and umask 022."""
    runs = tmp_path_factory.mktemp("runs")
    mask = os.umask(0o022)
    try:
        first = run_cli(*tiny_args("fit", shapes_root, runs, "--trainer.max_epochs=1", ALL_METRICS))
        assert first.returncode == 0, first.stderr[-3000:]
        version = runs / "shapes" / "version_0"
        epoch0 = json.loads((version / "metrics.json").read_text())
        last = version / "checkpoints" / "last.ckpt"
        second = run_cli(*tiny_args("fit", shapes_root, runs, f"--ckpt_path={last}", "--trainer.max_epochs=2"))
        assert second.returncode == 0, second.stderr[-3000:]
        test = run_cli(*tiny_args("test", shapes_root, runs, f"--ckpt_path={version / 'checkpoints' / 'best.ckpt'}"))
        assert test.returncode == 0, test.stderr[-3000:]
    finally:
        os.umask(mask)
    return {"runs": runs, "version": version, "epoch0": epoch0, "logs": [first, second, test]}


def test_a_resumed_run_continues_in_its_own_folder_with_its_curves_and_best_checkpoint(resumed):
    version = resumed["version"]
    assert [p.name for p in (resumed["runs"] / "shapes").iterdir()] == ["version_0"]
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    trained = [r for r in rows if r["train/loss"]]
    assert {r["epoch"] for r in trained} == {"0", "1"}  # the first epoch's curve is still there
    steps = [int(r["step"]) for r in trained]
    assert steps == sorted(set(steps))  # each step once, in order
    checkpoint = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [s for k, s in checkpoint["callbacks"].items() if "'monitor': 'val/position_accuracy'" in k]
    validated = [float(r["val/position_accuracy"]) for r in rows if r.get("val/position_accuracy")]
    assert len(validated) == 2 and float(state["best_model_score"]) == pytest.approx(max(validated))


def test_test_on_a_checkpoint_of_a_run_writes_into_a_subfolder_of_that_run(resumed):
    version = resumed["version"]
    assert f"results: {version / 'test-best'}" in resumed["logs"][2].stdout.splitlines()
    scores = json.loads((version / "test-best" / "metrics.json").read_text())
    assert "CIDEr" in scores and (version / "test-best" / "predictions.json").is_file()
    assert json.loads((version / "metrics.json").read_text()).keys() == scores.keys()  # the fit's own results stay


def test_a_redirected_log_has_lines_not_progress_bars_and_no_known_noise(resumed):
    first, second, test = resumed["logs"]
    for result in (first, second, test):
        assert "\r" not in result.stdout and "it/s]" not in result.stdout
        log = result.stdout + result.stderr
        for noise in ("litlogger", "LeafSpec", "dirpath has changed", "exists and is not empty"):
            assert noise not in log, noise
    assert "epoch 0 step" in first.stdout and "epoch 0 validation" in first.stdout and "val/CIDEr=" in first.stdout
    assert "epoch 1 step" in second.stdout and "epoch 0 step" not in second.stdout
    spice = [line for line in first.stderr.splitlines() if "SPICE" in line]
    assert len(spice) <= 1 and all(line.startswith("warning: SPICE left out:") for line in spice)


def test_results_respect_the_umask(resumed):
    version = resumed["version"]
    for name in ("metrics.json", "predictions.json", "test-best/metrics.json", "checkpoints/last.ckpt"):
        assert (version / name).stat().st_mode & 0o777 == 0o644, name


def test_help_lists_every_command_and_the_light_ones_start_without_lightning():
    from captioning.cli import COMMANDS

    listed = subprocess.run([sys.executable, "-m", "captioning", "--help"], capture_output=True, text=True)
    assert listed.returncode == 0
    for name, (_, description) in COMMANDS.items():
        assert f"  {name} " in listed.stdout and description in listed.stdout
    probe = (
        "import sys\ntry:\n    from captioning.cli import main\n    main(sys.argv[1:])\n"
        "finally:\n    print('LIGHTNING' if 'lightning' in sys.modules else 'light', file=sys.stderr)"
    )
    for args in (["--help"], ["caption", "--help"], ["evaluate", "--help"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert result.stderr.strip().splitlines()[-1] == "light", (args, result.stderr[-2000:])
    unknown = run_cli("trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_a_refused_resume_leaves_the_run_it_pointed_at_as_it_was(resumed, shapes_root):
    version = resumed["version"]
    config = (version / "config.yaml").read_text()
    assert "max_epochs: 2" in config  # the resumed fit's, written once its training started
    last = version / "checkpoints" / "last.ckpt"
    refused = run_cli(*tiny_args("fit", shapes_root, resumed["runs"], f"--ckpt_path={last}", "--trainer.max_epochs=0"))
    assert refused.returncode != 0 and "max_epochs=0" in refused.stderr  # Lightning: the checkpoint is past epoch 0
    assert (version / "config.yaml").read_text() == config
