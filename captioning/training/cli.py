"""LightningCLI for captioning: links the values that the model and the data must share, sets the defaults.

Defaults: checkpoints on the best validation CIDEr-D (and the last one, for resuming) written atomically, a CSV
logger (TensorBoard beside it when installed) that keeps a run in one folder (see `run_folder`), progress as lines
when stdout is not a terminal, and a test of the best checkpoint after `fit`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import re
import shutil
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from captioning.checkpoint import load_checkpoint
from captioning.data.datamodule import CaptionDataModule
from captioning.errors import UserError, UserNotice
from captioning.training import quiet
from captioning.training.best_checkpoint import BestCheckpoint
from captioning.training.module import CaptioningModule
from captioning.training.progress import LineProgress
from captioning.training.run_folder import ContinueCurves, RunConfig, RunLogger, run_of_checkpoint


class CaptioningCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            CaptioningModule,
            CaptionDataModule,
            args=args,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # one-line errors; no prefix matching
            trainer_defaults={
                "logger": {"class_path": "captioning.training.run_folder.RunLogger", "init_args": {"save_dir": "runs"}},
                "plugins": [{"class_path": "captioning.training.checkpoint_io.AtomicCheckpointIO"}],
            },
        )

    def add_arguments_to_parser(self, parser) -> None:
        # Given once, in the model's section, and read by the data's transforms and tokenization.
        parser.link_arguments("model.encoder", "data.encoder")
        parser.link_arguments("model.image_size", "data.image_size")
        parser.link_arguments("model.max_length", "data.max_length")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument(
            "--allow_missing_images",
            type=bool,
            default=False,
            help="a test that could not score every image of the split (unreadable files) still succeeds",
        )
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        # best.ckpt, replaced (atomically) by each better one: a name that the next run can be pointed at
        parser.set_defaults(
            {"checkpoint.monitor": "val/CIDEr", "checkpoint.mode": "max", "checkpoint.filename": "best",
             "checkpoint.enable_version_counter": False}
        )  # fmt: skip
        # last.ckpt after every epoch, or every `last_checkpoint.every_n_train_steps` optimizer steps (the COCO configs:
        # an epoch is an hour there), whether or not it was the best. `--ckpt_path .../last.ckpt` resumes a killed run
        # at the next batch of the epoch it was in (the train loader's position is in the checkpoint); with steps, the
        # steps after the last multiple of N are not in last.ckpt when a run ends (best.ckpt is saved on validation).
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False})

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            argv = sys.argv[1:] if args is None else list(args)
            subcommand = parser._subcommands_action._name_parser_map.get(argv[0]) if argv else None
            hint = did_you_mean(str(error), option_names(subcommand)) if subcommand else ""
            if not hint:
                raise
            raise ArgumentError(None, f"{error}{hint}") from None

    def _parse_ckpt_path(self) -> None:
        """A checkpoint (`--ckpt_path`, else `--model.init_from`) brings its architecture, and with it the data's
        preprocessing and caption length; every other setting comes from the config and the command line.

        Lightning's own version replaces all model settings by those saved in the checkpoint, which would silently
        drop e.g. `--model.eval_beam_size 3` from `captioning test --ckpt_path ...`.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        path = self.config[subcommand].get("ckpt_path") or self.config[subcommand].model.get("init_from")
        if not path or not Path(path).is_file():  # Lightning's "best" and "last", or a missing file: reported later
            return
        config, _, _ = load_checkpoint(path, mmap=True)  # the config only: Lightning reads the weights later
        architecture = {**config.to_dict(), "pretrained": False}  # its trained weights replace any pretrained ones
        del architecture["vocab_size"]  # the checkpoint's tokenizer decides it
        del architecture["freeze_encoder"]  # a choice of each run: the model takes the checkpoint's unless it is set
        self._say_what_the_checkpoint_replaces(subcommand, path, architecture)
        self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)  # links follow

    def _say_what_the_checkpoint_replaces(self, subcommand: str, path: str, architecture: dict) -> None:
        """One warning listing the architecture settings of this run (not left at their defaults) that the
        checkpoint's replace: a model has the shape its weights were trained in."""
        given = self.config[subcommand].model
        defaults = self.parser._subcommands_action._name_parser_map[subcommand].get_defaults().model
        replaced = [
            f"model.{key} {value} (not {given[key]})"
            for key, value in architecture.items()
            if key != "pretrained" and key in given and given[key] != value and given[key] != defaults.get(key)
        ]
        if replaced:
            quiet.silence_known_noise()  # this warning comes before the classes: one line, as the later ones
            warnings.warn(f"{path} brings its architecture: {', '.join(replaced)}", UserNotice, stacklevel=2)

    def before_instantiate_classes(self) -> None:
        """A checkpoint of a run under the logger's save_dir keeps that run's folder: `fit` continues its
        version_N (curves, checkpoints, best-checkpoint tracking), the other commands write into
        `version_N/COMMAND-CHECKPOINT`."""
        quiet.silence_known_noise(resuming=bool(self.config[self.subcommand].get("ckpt_path")))
        config = self.config[self.subcommand]
        check_accelerator(config.trainer.get("accelerator"))
        logger = config.trainer.get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or "save_dir" not in init or "version" not in init:
            return
        run = run_of_checkpoint(config.get("ckpt_path"), init.save_dir)
        if run is None:
            return
        init.name = run.name
        if self.subcommand == "fit":
            init.version = run.version
            if logger.class_path in ("lightning.pytorch.loggers.CSVLogger", f"{RunLogger.__module__}.RunLogger"):
                logger.class_path = f"{RunLogger.__module__}.RunLogger"  # Lightning's, able to continue the run
                init.continue_run = True
                self.trainer_defaults["callbacks"] = [*self.trainer_defaults.get("callbacks", []), ContinueCurves()]
        else:
            init.version = f"{run.version}/{self.subcommand}-{Path(config.ckpt_path).stem}"

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = trainer_config.get("callbacks") or []
        bars = any(isinstance(c, ProgressBar) for c in (configured if isinstance(configured, list) else [configured]))
        if not sys.stdout.isatty() and trainer_config.get("enable_progress_bar", True) is not False and not bars:
            self.trainer_defaults["callbacks"] = [*self.trainer_defaults.get("callbacks", []), LineProgress()]
        trainer = super().instantiate_trainer(**kwargs)
        folder = run_folder(trainer)
        self._new_run_folder = folder is not None and not Path(folder).exists()
        loggers = trainer.loggers
        if len(loggers) == 1 and isinstance(loggers[0], CSVLogger):
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
                csv = loggers[0]  # same folder: one run, one directory
                trainer.loggers = [csv, TensorBoardLogger(csv.save_dir, name=csv.name, version=csv.version)]
        return trainer

    def after_instantiate_classes(self) -> None:
        path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if path and Path(path).is_file():  # not Lightning's "best" and "last": those are read as Lightning finds them
            self.model.restore_from = str(path)  # its model, not init_from's (which may be gone): see configure_model

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            folder = self._own_run_folder()
            if subcommand == "fit" and folder is not None:
                self._remove_unsaved_run(folder)
                self._say_how_to_resume(folder)
            self._say_where_results_are(subcommand, folder)  # e.g. a test after fit that missed images
            raise
        self._say_where_results_are(subcommand, self._own_run_folder())

    def _own_run_folder(self) -> Path | None:
        """The run's folder on the first process; None on the others (they neither print nor remove)."""
        trainer = getattr(self, "trainer", None)
        folder = run_folder(trainer) if trainer is not None else None
        return Path(folder) if folder and trainer.is_global_zero else None

    def _say_where_results_are(self, subcommand: str, folder: Path | None) -> None:
        """The run's folder after fit; the folder of predictions.json (and metrics.json) after test and predict."""
        if folder is not None and folder.is_dir():
            print(f"run folder: {folder}" if subcommand == "fit" else f"results: {folder}")

    def _remove_unsaved_run(self, folder: Path) -> None:
        """A fit that failed before its first checkpoint leaves no folder behind: the next run takes its number."""
        saved = any(c.best_model_path or c.last_model_path for c in self.trainer.checkpoint_callbacks)
        if self._new_run_folder and not saved:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # runs/NAME too, when this run was its only one
                folder.parent.rmdir()

    def _say_how_to_resume(self, folder: Path) -> None:
        """After Ctrl-C (Lightning shuts down and exits 1), the command that goes on from the run's last.ckpt."""
        last = folder / "checkpoints" / "last.ckpt"
        if self.trainer.interrupted and last.is_file():
            print(f"interrupted: to go on, run the same command with --ckpt_path {last}", file=sys.stderr)

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.interrupted:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            self.after_test()

    def after_test(self) -> None:
        """Scores over fewer images than the split names are not comparable: a failing exit, unless allowed."""
        counts = self.model.test_counts
        missing = counts.get("images_in_split", 0) - counts.get("images_scored", 0)
        if missing > 0 and not self.config[self.subcommand].get("allow_missing_images"):
            raise UserError(
                f"{missing} of the {counts['images_in_split']} test images were not scored (see the warnings above); "
                f"metrics.json holds the scores of the other {counts['images_scored']}: pass "
                "--allow_missing_images=true to accept them"
            )


def run_folder(trainer) -> str | None:
    """The run's folder, from its logger on this process (`trainer.log_dir` is a collective call under DDP)."""
    return getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None


def option_names(parser) -> list[str]:
    """Every dotted option a (sub)command's parser knows, e.g. "model.dim", "trainer.max_epochs"."""
    return [name.removeprefix("--") for action in parser._actions for name in action.option_strings if name[:2] == "--"]


def did_you_mean(message: str, names: list[str]) -> str:
    """The hint ' (did you mean --trainer.max_epochs?)': the closest known option to each unknown one in the parser's
    message ("unrecognized arguments: --trainer.max_epoch 3", "Group 'model' does not accept option 'dimm'")."""
    unknown = re.findall(r"--([\w.]+)", message.partition("unrecognized arguments:")[2])
    unknown += [
        f"{group}.{option}" for group, option in re.findall(r"Group '([\w.]+)' does not accept option '(\w+)'", message)
    ]
    guesses = [match[0] for name in unknown if (match := difflib.get_close_matches(name, names, n=1, cutoff=0.75))]
    return f" (did you mean {', '.join(f'--{guess}' for guess in guesses)}?)" if guesses else ""


def check_accelerator(accelerator) -> None:
    """A GPU config on a machine without one: say how to run it on the CPU instead of Lightning's "No supported gpu
    backend found!"."""
    if accelerator not in ("gpu", "cuda") or CUDAAccelerator.is_available():
        return
    if accelerator == "gpu" and MPSAccelerator.is_available():
        return
    raise UserError(
        f"trainer.accelerator: '{accelerator}', but this machine has no GPU that torch can use; to run on the CPU, "
        "add --trainer.accelerator cpu --trainer.precision 32-true"
    )


def main(argv: list[str], pass_args: bool = True) -> int:
    """Runs a Lightning subcommand (`argv` starts with it); without `pass_args`, LightningCLI reads sys.argv."""
    CaptioningCLI(args=argv if pass_args else None)
    return 0
