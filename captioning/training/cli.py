"""LightningCLI for captioning: links the values that the model and the data must share, sets the defaults.

Defaults: checkpoints on the best validation CIDEr-D (and the last one, for resuming) written atomically, a CSV
logger (TensorBoard beside it when installed), and a test of the best checkpoint after `fit`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from captioning.checkpoint import load_checkpoint
from captioning.data.datamodule import CaptionDataModule
from captioning.training.module import CaptioningModule


class CaptioningCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            CaptioningModule,
            CaptionDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # main() prints a one-line error instead of the whole usage
            trainer_defaults={
                "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
                "plugins": [{"class_path": "captioning.training.checkpoint_io.AtomicCheckpointIO"}],
            },
        )

    def add_arguments_to_parser(self, parser) -> None:
        # Given once, in the model's section, and read by the data's transforms and tokenization.
        parser.link_arguments("model.encoder", "data.encoder")
        parser.link_arguments("model.image_size", "data.image_size")
        parser.link_arguments("model.max_length", "data.max_length")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # best.ckpt, replaced (atomically) by each better one: a name that the next run can be pointed at
        parser.set_defaults(
            {"checkpoint.monitor": "val/CIDEr", "checkpoint.mode": "max", "checkpoint.filename": "best",
             "checkpoint.enable_version_counter": False}
        )  # fmt: skip
        # last.ckpt after every epoch, whether or not it was the best: a killed run resumes from where it was.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False})

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
        config, _, _ = load_checkpoint(path)
        architecture = {**config.to_dict(), "pretrained": False}  # its trained weights replace any pretrained ones
        del architecture["vocab_size"]  # the checkpoint's tokenizer decides it
        self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)  # links follow

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        loggers = trainer.loggers
        if len(loggers) == 1 and isinstance(loggers[0], CSVLogger):
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
                csv = loggers[0]  # same folder: one run, one directory
                trainer.loggers = [csv, TensorBoardLogger(csv.save_dir, name=csv.name, version=csv.version)]
        return trainer

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.interrupted:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def main(argv: list[str], pass_args: bool = True) -> int:
    """Runs a Lightning subcommand (`argv` starts with it); without `pass_args`, LightningCLI reads sys.argv."""
    CaptioningCLI(args=argv if pass_args else None)
    return 0
