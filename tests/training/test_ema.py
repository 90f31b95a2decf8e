"""model.ema_decay: the moving average of the weights is what validation, checkpoints and `Captioner` use, and a
resumed run continues the same average."""

from __future__ import annotations

import lightning as L
import torch

from captioning import Captioner
from captioning.checkpoint import load_checkpoint
from captioning.training.ema import WeightAverage
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, tiny_data
from tests.training.audit import OpCounter

MODEL = {**TINY_MODEL, "encoder": "test_resnet", "dropout": 0.0, "warmup_steps": 1, "ema_decay": 0.9}


class StopAt(L.Callback):
    """Ends a run of 4 steps after `step` of them, as a kill would, with the schedule of the whole run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step


def fit(shapes_root, steps: int, folder, ckpt_path=None, callbacks=()) -> CaptioningModule:
    L.seed_everything(0, verbose=False)
    module = CaptioningModule(**MODEL)
    trainer = L.Trainer(
        max_steps=4, callbacks=[StopAt(steps), *callbacks], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        accelerator="cpu", default_root_dir=folder,
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root, flip=False), ckpt_path=ckpt_path)
    trainer.save_checkpoint(folder / f"step{steps}.ckpt")
    return module


def test_the_average_is_what_checkpoints_captioner_and_validation_use(shapes_root, one_thread, tmp_path):
    module = fit(shapes_root, 4, tmp_path)
    average, trained = module.ema.model.state_dict(), module.model.state_dict()
    assert module.ema.updates.item() == 4 and module.eval_model is module.ema.model
    assert any(not torch.equal(average[k], trained[k]) for k in average)

    captioner = Captioner.from_checkpoint(tmp_path / "step4.ckpt", device="cpu")
    for key, value in captioner.model.state_dict().items():
        torch.testing.assert_close(value, average[key])

    data = tiny_data(shapes_root, flip=False)
    data.prepare_data()
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    before = module.eval().caption_batch(batch)
    with torch.no_grad():
        module.ema.model.decoder.token_embed.weight.zero_()  # an average that can only write one word
    after = module.caption_batch(batch)
    assert after != before and len({len(set(c.split())) for c in after.values()}) == 1


class FirstAverage(L.Callback):
    """Keeps the average as the first training batch of a run finds it."""

    def on_train_batch_start(self, trainer, module, *args) -> None:
        if not hasattr(self, "state"):
            self.state = {k: v.clone() for k, v in module.ema.state_dict().items()}


def test_a_resumed_run_continues_the_average_it_saved(shapes_root, one_thread, tmp_path):
    fit(shapes_root, 2, tmp_path)
    saved = torch.load(tmp_path / "step2.ckpt", weights_only=True)["state_dict"]
    first = FirstAverage()
    resumed = fit(shapes_root, 4, tmp_path / "resumed", ckpt_path=tmp_path / "step2.ckpt", callbacks=[first])
    assert first.state["updates"].item() == 2 and resumed.ema.updates.item() == 4
    for key, value in first.state.items():
        torch.testing.assert_close(value, saved[f"ema.{key}"])  # not the trained weights, not a fresh copy


def test_a_run_started_from_a_checkpoint_averages_from_the_weights_it_starts_from(shapes_root, one_thread, tmp_path):
    fit(shapes_root, 2, tmp_path)
    L.seed_everything(0, verbose=False)
    module = CaptioningModule(**{**MODEL, "init_from": str(tmp_path / "step2.ckpt")})  # e.g. SCST after XE
    first = FirstAverage()
    trainer = L.Trainer(
        max_steps=1, callbacks=[first], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, tiny_data(shapes_root, flip=False))
    _, _, start = load_checkpoint(tmp_path / "step2.ckpt")  # the first run's average: what the new run starts from
    assert first.state["updates"].item() == 0
    for key, value in start.items():
        torch.testing.assert_close(first.state[f"model.{key}"], value)


def test_an_update_reads_nothing_back_and_moves_each_weight_its_share_of_the_way():
    model = torch.nn.Linear(4, 3)
    average = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = average.model.weight.clone()
    with OpCounter() as counter:
        average.update(model)
    assert counter.syncs == 0  # a tensor weight for foreach lerp would be read back with .item() at every step
    decay = 2 / 11  # the first update's warm-up decay, (1 + n) / (10 + n), below 0.5
    torch.testing.assert_close(average.model.weight, decay * before + (1 - decay) * model.weight)
