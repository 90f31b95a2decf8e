"""One run, one folder: a resumed run continues in its own `version_N`, and `test`, `validate` or `predict` on one of
its checkpoints write into a subfolder of it (`version_N/test-best/`), beside the fit's own results.

A checkpoint belongs to a run when it lies at `SAVE_DIR/NAME/VERSION/checkpoints/FILE.ckpt` under the logger's
`save_dir`; a checkpoint from anywhere else starts a new version as usual.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import fsspec.utils
from lightning.pytorch import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from captioning.files import write_atomic


@dataclass(frozen=True)
class RunFolder:
    save_dir: str
    name: str
    version: str


def run_of_checkpoint(checkpoint: str | Path | None, save_dir: str | Path) -> RunFolder | None:
    """The run folder that holds `checkpoint`, when it is one of the runs under `save_dir`."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    path = Path(checkpoint).resolve()
    if path.parent.name != "checkpoints" or len(path.parents) < 4 or path.parents[3] != Path(save_dir).resolve():
        return None
    return RunFolder(str(path.parents[3]), path.parents[2].name, path.parents[1].name)


class RunLogger(CSVLogger):
    """Lightning's CSV logger (`metrics.csv` in `save_dir/name/version`) that can continue a run's curves.

    Args:
        continue_run: keep the folder's `metrics.csv` (Lightning's logger deletes it) and go on appending to it; rows
            logged after the resumed checkpoint's step are dropped when training starts again (`drop_after`).
    """

    def __init__(self, *args, continue_run: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.continue_run = continue_run

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.continue_run:
            self._experiment = _ContinuingWriter(self.log_dir)
        return super().experiment

    def drop_after(self, step: int) -> None:
        """Forgets the rows of steps >= `step`: a killed run logged them after its last checkpoint, and they are
        about to be trained (and logged) again."""
        writer = self.experiment
        if isinstance(writer, _ContinuingWriter):
            writer.drop_after(step)


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def _check_log_dir_exists(self) -> None:  # the run's own folder: its metrics.csv is kept
        pass

    def drop_after(self, step: int) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = [row for row in csv.DictReader(file) if not row.get("step") or int(row["step"]) < step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        if fsspec.utils.get_protocol(self.metrics_file_path) == "file":  # killed mid-write, the old curves stay whole
            write_atomic(self.metrics_file_path, lambda file: file.write(text.getvalue().encode("utf-8")))
        else:  # an object store writes whole objects
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                file.write(text.getvalue())


class ContinueCurves(Callback):
    """When a resumed run starts training again, drops the curve rows that its killed predecessor logged after
    the checkpoint it resumes from (their steps are trained again)."""

    def on_train_start(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, RunLogger) and trainer.is_global_zero:
                logger.drop_after(trainer.global_step)


class RunConfig(SaveConfigCallback):
    """The run's `config.yaml`. A fit from a checkpoint writes it only when training starts, once Lightning and the
    sampler have accepted the checkpoint: a refused resume (other training data, `max_epochs` already reached) leaves
    the record of the run it pointed at as it was."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.config.get("ckpt_path"):
            return  # see on_train_start
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")  # nothing when already saved
