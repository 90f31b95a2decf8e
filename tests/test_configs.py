"""Every YAML file in configs/ parses into the CLI's full configuration, builds its model and trains one step."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs_for_the_main_job_and_real_data():
    assert {"shapes.yaml", "shapes_hard.yaml", "coco.yaml", "flickr8k.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_parses_and_links_model_values_into_the_data(config):
    from captioning.training.cli import CaptioningCLI

    with pytest.raises(SystemExit) as done:
        CaptioningCLI(args=["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    written = yaml.safe_load(config.read_text())
    assert written["data"]["dataset"] in ("shapes", "coco", "karpathy", "folder")
    # an SCST config takes its architecture, encoder included, from the checkpoint given as model.init_from
    assert written["model"].get("encoder") or ("init_from" in written["model"] and written["model"]["scst"])


def test_print_config_shows_the_resolved_config_with_linked_values():
    result = run_cli("fit", "--config", str(ROOT / "configs" / "shapes.yaml"), "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["encoder"] == "test_resnet" and printed["trainer"]["max_epochs"] == 16
    assert printed["checkpoint"]["monitor"] == "val/position_accuracy"  # the shapes' own check, not CIDEr-D
    assert printed["last_checkpoint"]["filename"] == "last"


# Each config's own model (encoder family, width, depth, optimizer, schedule) takes one real optimizer step on a few
# tiny images: settings that parse can still fail to build or train. Only what would make it slow is overridden.
TINY_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--trainer.max_steps=1",
    "--trainer.limit_val_batches=0",
    "--trainer.log_every_n_steps=1",
    "--checkpoint.save_top_k=0",
    "--last_checkpoint.save_top_k=0",
    "--test_after_fit=false",
    "--model.pretrained=false",
    "--data.batch_size=2",
    "--data.num_workers=0",
]
SMALL_IMAGES = "--model.image_size=64"  # the big encoders (ViT-B/16, ResNet-50) at 4x4 or 2x2 tokens


def _image(path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((64, 48), 40 + seed).convert("RGB").save(path)


def _karpathy_set(folder) -> list[str]:
    """Two training images (one of them 'restval'), one validation and one test image in a Karpathy split file."""
    images = []
    for i, split in enumerate(("train", "restval", "val", "test")):
        _image(folder / "images" / f"{i}.jpg", i)
        captions = [{"raw": f"a {colour} square beside a circle"} for colour in ("red", "red", "blue", "blue", "red")]
        images.append({"filepath": "images", "filename": f"{i}.jpg", "split": split, "imgid": i, "sentences": captions})
    (folder / "karpathy.json").write_text(json.dumps({"images": images}))
    return [f"--data.karpathy_file={folder / 'karpathy.json'}", f"--data.root={folder}", SMALL_IMAGES]


def _image_folder(folder) -> list[str]:
    """Ten images in the ImageFolder layout (metadata.jsonl at the top: split 80/10/10 once)."""
    rows = []
    for i in range(10):
        _image(folder / "data" / f"{i}.png", i)
        rows.append(json.dumps({"file_name": f"{i}.png", "text": ["a red square", "a blue circle", "a red circle"]}))
    (folder / "data" / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return [f"--data.root={folder / 'data'}", SMALL_IMAGES]


def _shapes(folder) -> list[str]:
    sizes = json.dumps({"train": 2, "val": 1, "test": 1})
    return [f"--data.root={folder / 'shapes'}", f"--data.shapes_split_sizes={sizes}", "--data.shapes_image_size=64"]


DATA = {"karpathy": _karpathy_set, "folder": _image_folder, "shapes": _shapes}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_builds_its_model_and_takes_one_training_step(config, tmp_path, checkpoint, one_thread, monkeypatch):
    from captioning.checkpoint import load_checkpoint
    from captioning.training.cli import CaptioningCLI

    written = yaml.safe_load(config.read_text())
    args = ["fit", "--config", str(config), *TINY_RUN, f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    args += DATA[written["data"]["dataset"]](tmp_path)
    if written["data"].get("feature_cache"):  # in the test's folder, not the config's
        args.append(f"--data.feature_cache={tmp_path / 'features'}")
    encoder = written["model"].get("encoder")
    if written["model"].get("scst"):  # its architecture comes from the cross-entropy checkpoint
        args.append(f"--model.init_from={checkpoint}")
        encoder = load_checkpoint(checkpoint)[0].encoder
    monkeypatch.setattr(sys, "argv", ["captioning"])  # not pytest's arguments beside `args`
    cli = CaptioningCLI(args=args)
    assert cli.model.model.config.encoder == encoder
    assert cli.trainer.global_step == 1
    optimizer = cli.trainer.optimizers[0]
    assert {int(state["step"]) for state in optimizer.state.values()} == {1}  # one optimizer step, no more
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and ("scst/reward" in metrics) == bool(written["model"].get("scst"))
