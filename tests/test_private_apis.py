"""The private Lightning and LitData names that captioning relies on, where neither offers a public way.

An upgrade that renames or changes one would not fail loudly: an override of a renamed method is never called, and
a flag read under a new meaning is silently wrong. Each test here names the API and what in captioning depends on it.
"""

from __future__ import annotations

import inspect

import pytest


def require(ok: bool, api: str, change: str, dependant: str) -> None:
    assert ok, f"{api} {change}; {dependant} depends on it: adapt captioning to this version before widening its pin"


def calls(function, call: str) -> bool:
    return call in inspect.getsource(function)


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_lightning_cli_still_calls_parse_ckpt_path_which_captioning_replaces():
    from lightning.pytorch.cli import LightningCLI

    from captioning.training.cli import CaptioningCLI

    api = "lightning.pytorch.cli.LightningCLI._parse_ckpt_path"
    dependant = (
        "CaptioningCLI._parse_ckpt_path (captioning/training/cli.py: a checkpoint brings only its architecture, so "
        "`test --ckpt_path CKPT --model.eval_beam_size 3` keeps its 3 beams)"
    )
    method = getattr(LightningCLI, "_parse_ckpt_path", None)
    require(method is not None, api, "is gone", dependant)
    require(parameters(method) == ["self"], api, f"takes {parameters(method)}, not (self)", dependant)
    require(parameters(CaptioningCLI._parse_ckpt_path) == ["self"], api, "has another signature than ours", dependant)
    source = inspect.getsource(LightningCLI.__init__)
    steps = ("self.parse_arguments(", "self._parse_ckpt_path()", "self.instantiate_classes")
    order = [source.find(step) for step in steps]
    between = -1 not in order and order == sorted(order)
    require(between, api, "is no longer called between parsing the arguments and instantiating", dependant)


def test_lightning_cli_still_runs_subcommands_through_run_subcommand():
    from lightning.pytorch.cli import LightningCLI

    api = "lightning.pytorch.cli.LightningCLI._run_subcommand"
    dependant = "CaptioningCLI._run_subcommand (a failed fit removes its empty run folder; fit prints 'run folder:')"
    method = getattr(LightningCLI, "_run_subcommand", None)
    require(method is not None, api, "is gone", dependant)
    require(parameters(method) == ["self", "subcommand"], api, f"takes {parameters(method)}", dependant)
    require(calls(LightningCLI.__init__, "self._run_subcommand(self.subcommand)"), api, "is not called", dependant)
    api = "lightning.pytorch.cli.LightningCLI._get"
    dependant = "CaptioningCLI.instantiate_trainer (reads the trainer's configured callbacks)"
    require(parameters(LightningCLI._get)[:3] == ["self", "config", "key"], api, "changed", dependant)


def test_the_csv_writer_still_clears_its_folder_in_check_log_dir_exists(tmp_path):
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    from captioning.training.run_folder import _ContinuingWriter

    api = "lightning ExperimentWriter._check_log_dir_exists"
    dependant = "run_folder._ContinuingWriter (a resumed run keeps its metrics.csv and appends to it)"
    method = getattr(ExperimentWriter, "_check_log_dir_exists", None)
    require(method is not None, api, "is gone", dependant)
    require(parameters(method) == ["self"], api, f"takes {parameters(method)}", dependant)
    inits = [cls.__init__ for cls in ExperimentWriter.__mro__ if "__init__" in vars(cls)]
    require(any(calls(init, "self._check_log_dir_exists()") for init in inits), api, "is not called", dependant)

    # What the override is for, through the writer's other private parts (`_fs`): the curves of a resumed run go on.
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,1,2.0\n0,2,1.5\n0,3,1.2\n")
    writer = _ContinuingWriter(str(tmp_path))
    writer.drop_after(3)  # the killed run logged step 3 after its last checkpoint
    writer.log_metrics({"epoch": 0, "train/loss": 1.1}, step=3)
    writer.save()
    rows = metrics.read_text().splitlines()
    require(rows == ["epoch,step,train/loss", "0,1,2.0", "0,2,1.5", "0,3,1.1"], api, f"now gives {rows}", dependant)


def test_litdata_loader_still_marks_a_resumed_epoch_with_restore():
    pytest.importorskip("litdata")
    from litdata import StreamingDataLoader

    api = "litdata.StreamingDataLoader.restore"
    dependant = (
        "captioning.data.streaming.CaptionStreamingLoader (after a run resumed mid-epoch, the next epoch starts "
        "afresh instead of replaying the resumed one's state and yielding nothing)"
    )
    require(calls(StreamingDataLoader.__init__, "self.restore = False"), api, "is not set up", dependant)
    require(calls(StreamingDataLoader.load_state_dict, "self.restore = True"), api, "is not set on resume", dependant)
    require(calls(StreamingDataLoader.__iter__, "not self.restore"), api, "no longer keeps a resumed state", dependant)
    # The number of samples the resumed epoch has drawn, read through the public state_dict.
    api = "litdata.StreamingDataLoader.state_dict()['num_samples_yielded']"
    require(calls(StreamingDataLoader.state_dict, '"num_samples_yielded"'), api, "is gone", dependant)


def test_model_checkpoint_still_reads_its_metrics_through_monitor_candidates():
    from lightning.pytorch.callbacks import ModelCheckpoint

    api = "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates"
    dependant = (
        "BestCheckpoint (captioning/training/best_checkpoint.py: a monitor the data does not log reads val/CIDEr)"
    )
    method = getattr(ModelCheckpoint, "_monitor_candidates", None)
    require(method is not None, api, "is gone", dependant)
    require(parameters(method) == ["self", "trainer"], api, f"takes {parameters(method)}", dependant)
    for hook in (ModelCheckpoint.on_validation_end, ModelCheckpoint.on_train_epoch_end):
        require(calls(hook, "self._monitor_candidates(trainer)"), api, f"is not read in {hook.__name__}", dependant)
