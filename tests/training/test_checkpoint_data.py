"""A checkpoint brings its architecture and its vocabulary: the settings it replaces are named, captions of another
language are refused in one line, a vocabulary that misses their words and a run resumed on other data are told."""

from __future__ import annotations

import json

import torch
from lightning import Trainer

from captioning.checkpoint import checkpoint_metadata
from captioning.data.shapes import ensure_shapes
from captioning.model import CaptioningModel, ModelConfig
from captioning.text.tokenizer import CaptionTokenizer
from captioning.training.module import CaptioningModule
from tests.conftest import TINY_MODEL, TINY_SPLITS, run_cli, tiny_args, tiny_data


def saved(path, captions: list[str], language: str = "en", **settings):
    """A checkpoint of the tiny model (random weights, `settings` changed) whose vocabulary is the words of
    `captions`."""
    tokenizer = CaptionTokenizer.train(captions, min_frequency=1, language=language)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY_MODEL, **settings})
    state = {f"model.{k}": v for k, v in CaptioningModel(config).state_dict().items()}
    torch.save({"captioning": checkpoint_metadata(config, tokenizer), "state_dict": state}, path)
    return path


def test_a_checkpoint_whose_vocabulary_is_in_another_language_is_refused(tmp_path, shapes_root):
    path = saved(tmp_path / "zh.ckpt", ["一个红色的圆", "两个蓝色的方块"], language="zh")
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, f"--model.init_from={path}", "--trainer.max_steps=1"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: its vocabulary is for captions in 'zh', but the training captions are in 'en' "
        "(data.language); start from a checkpoint of their language, or from none"
    )


def test_a_vocabulary_that_misses_most_words_of_the_training_captions_says_so(tmp_path, shapes_root):
    path = saved(tmp_path / "pets.ckpt", ["a dog runs on the grass", "a cat sleeps on a red sofa"])
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, f"--model.init_from={path}", "--trainer.max_steps=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "are not in its vocabulary" in line]
    share = int(line.split(": ")[2].split("%")[0])
    assert line.startswith(f"warning: {path}: ") and 50 <= share < 100, line  # "a", "on", "red" are in it


def test_a_run_resumed_on_other_training_data_says_so(tmp_path, checkpoint):
    smaller = {**TINY_SPLITS, "train": 48}
    ensure_shapes(tmp_path / "shapes", image_size=64, split_sizes=smaller)
    sizes = f"--data.shapes_split_sizes={json.dumps(smaller)}"
    args = tiny_args("fit", tmp_path / "shapes", tmp_path, f"--ckpt_path={checkpoint}", sizes, "--trainer.max_epochs=3")
    result = run_cli(*args, "--test_after_fit=false")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = f"{checkpoint} was trained on shapes (96 images); this run resumes it on shapes (48 images)"
    assert f"warning: {expected}" in result.stderr.splitlines()


def test_architecture_settings_that_the_checkpoint_replaces_are_named(tmp_path, shapes_root, checkpoint):
    result = run_cli(*tiny_args("test", shapes_root, tmp_path, f"--ckpt_path={checkpoint}", "--model.dim=48"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: {checkpoint} brings its architecture: model.dim 32 (not 48)" in result.stderr.splitlines()


def test_a_checkpoint_with_fewer_caption_positions_trains_on_data_set_for_more(tmp_path, shapes_root, one_thread):
    """Outside the CLI (which links data.max_length to the model's), the data still follows the model's position
    table: captions encoded for 20 positions would index past a table of 8 (on a GPU, a device-side assert)."""
    path = saved(tmp_path / "short.ckpt", ["a red circle above a blue square in the top left"], max_length=8)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    data = tiny_data(shapes_root, max_length=20)
    module = CaptioningModule(**TINY_MODEL, init_from=str(path))
    trainer.fit(module, data)
    assert trainer.global_step == 2 and module.model.config.max_length == 8 and data.hparams.max_length == 8
