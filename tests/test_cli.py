"""The `captioning` command as a user runs it: subprocesses, real files, real exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml

from tests.conftest import COCO_MINI, ROOT, TINY_MODEL, TINY_SPLITS, require, run_cli, tiny_args

pytestmark = pytest.mark.slow


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "caption", "evaluate"):
        assert command in result.stdout + result.stderr


def test_fit_writes_checkpoints_predictions_and_metrics(trained_run):
    assert {"last.ckpt"} <= {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    predictions = json.loads((trained_run / "predictions.json").read_text())
    assert len(predictions) == 16 and set(predictions[0]) == {"image_id", "caption"}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "grounded_accuracy"} <= set(metrics)
    assert metrics["foil_pairs"] > 0 and 0 <= metrics["foil_accuracy"] <= 1  # the relation probe, every test
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert any(row.get("val/CIDEr") for row in rows) and any(row.get("train/loss") for row in rows)
    assert any(row.get("val/foil_accuracy") for row in rows)  # and in the curves


def test_checkpoint_is_self_contained_and_loads_without_running_code(checkpoint):
    entry = torch.load(checkpoint, map_location="cpu", weights_only=True)["captioning"]
    assert entry["model_config"]["dim"] == TINY_MODEL["dim"] and "[BOS]" in entry["tokenizer"]
    assert entry["training_data"] == {"dataset": "shapes", "images": TINY_SPLITS["train"]}  # the demo page says it


def test_killed_run_resumes_from_its_last_checkpoint_and_skips_unreadable_images(tmp_path, shapes_root, checkpoint):
    data = tmp_path / "shapes-data"
    shutil.copytree(shapes_root, data)
    (data / "train" / "000007.png").write_bytes(b"not a png")
    resumed = run_cli(*tiny_args("fit", data, tmp_path, f"--ckpt_path={checkpoint}", "--trainer.max_epochs=3"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    skipped = [line for line in resumed.stderr.splitlines() if "000007.png: cannot read image" in line]
    assert skipped and all(line.startswith("warning: skipping unreadable image: ") for line in skipped)
    assert "self.dataset[idx]" not in resumed.stderr  # one line, without the source line that warned
    assert "skipped 1 unreadable training images this epoch" in resumed.stderr
    (version,) = (tmp_path / "shapes").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    epochs = {int(row["epoch"]) for row in rows if row.get("train/loss") or row.get("val/CIDEr")}
    assert epochs == {2}  # epochs 0 and 1 came from the checkpoint
    assert torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_fit_on_the_real_coco_mini_set(tmp_path):
    annotations = require(COCO_MINI / "annotations" / "captions_val2017.json")
    model = [f"--model.{key}={value}" for key, value in TINY_MODEL.items()]
    result = run_cli(
        "fit", "--config", str(ROOT / "configs" / "coco.yaml"), *model, "--model.pretrained=false",
        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.devices=1",
        "--model.compile=false",  # the GPU config compiles; on a busy CPU that alone can take minutes
        "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.batch_size=8", "--data.eval_batch_size=8",
        "--data.num_workers=0", "--data.min_word_frequency=2", "--data.dataset=coco",  # the official files
        *(f"--data.annotations.{split}={annotations}" for split in ("train", "val", "test")),
        *(f"--data.images.{split}={COCO_MINI / 'val2017'}" for split in ("train", "val", "test")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: 4841 of the 5000 images" in result.stderr
    (version,) = (tmp_path / "coco").iterdir()
    assert len(json.loads((version / "predictions.json").read_text())) == 159  # every image present
    assert "grounded_accuracy" not in json.loads((version / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.no_such_key=3"], "no_such_key"),
        (["--trainer.max_epoch=3"], "--trainer.max_epoch=3 (did you mean --trainer.max_epochs?)"),  # no prefixes
        (["--model.encoder=resnet_5O"], "unknown timm model name 'resnet_5O'"),
        (["--model.test_metrics=[BLEU,SPICY]"], "model.test_metrics: unknown metric 'SPICY'"),
        (
            [
                "--data.dataset=coco",
                "--data.annotations={train: /no/such.json, val: /no/such.json}",
                "--data.images={train: /tmp, val: /tmp}",
            ],
            "annotation file not found: /no/such.json",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_a_one_line_error_and_a_failing_exit(tmp_path, shapes_root, args, message):
    result = run_cli(*tiny_args("fit", shapes_root, tmp_path, *args))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if message in line]
    assert errors, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "shapes").exists()  # a run that never saved a checkpoint leaves no empty version folder


def test_ddp_fits_and_its_validation_gathers_every_process_to_equal_one_process(tmp_path, shapes_root):
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    fitted = run_cli(*tiny_args("fit", shapes_root, tmp_path / "fit", *ddp, "--trainer.max_epochs=1"))
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    (checkpoint,) = (tmp_path / "fit").glob("shapes/version_0/checkpoints/last.ckpt")

    def validate(name: str, *extra: str) -> dict:
        # 16 validation images in batches of 5 over 2 processes: the sampler repeats some, and each process
        # sees only its shard, so equal metrics show that the captions were gathered and de-duplicated.
        args = tiny_args("validate", shapes_root, tmp_path / name, f"--ckpt_path={checkpoint}", *extra)
        result = run_cli(*args, "--data.eval_batch_size=5")
        assert result.returncode == 0, result.stderr[-3000:]
        rows = csv.DictReader(next((tmp_path / name).glob("shapes/version_0/metrics.csv")).open())
        row = next(r for r in rows if r.get("val/CIDEr"))
        return {key: float(value) for key, value in row.items() if key.startswith("val/")}

    one, two = validate("one"), validate("two", *ddp)
    assert one == two and one["val/CIDEr"] >= 0


def test_best_checkpoint_reloads_to_the_captions_it_was_tested_with(trained_run, shapes_root):
    from captioning import Captioner

    best = trained_run / "checkpoints" / "best.ckpt"
    captioner = Captioner.from_checkpoint(best, device="cpu")
    tested = {p["image_id"]: p["caption"] for p in json.loads((trained_run / "predictions.json").read_text())}
    paths = [shapes_root / "test" / f"{image_id:06d}.png" for image_id in tested]
    assert captioner.spec.mode == "greedy"  # the checkpoint's own spec: configs/shapes.yaml's eval_beam_size 1
    again = captioner.caption(paths)  # as testing decoded: greedy, no [UNK], one word at least
    assert [c.text for c in again] == list(tested.values())
    written = run_cli("caption", "--checkpoint", str(best), *map(str, paths[:8]))  # no decoding flags either
    assert written.returncode == 0, written.stderr[-3000:]
    assert [line.split("\t")[1] for line in written.stdout.splitlines()] == list(tested.values())[:8]


def test_test_with_beam_search_reports_what_the_caption_script_writes(trained_run, shapes_root, tmp_path):
    from captioning import Captioner

    best = trained_run / "checkpoints" / "best.ckpt"
    beams = ("--model.eval_beam_size=3", f"--ckpt_path={best}")
    tested = run_cli(*tiny_args("test", shapes_root, tmp_path / "test", *beams))
    assert tested.returncode == 0, tested.stderr[-3000:]
    (folder,) = (tmp_path / "test" / "shapes").iterdir()
    written = {p["image_id"]: p["caption"] for p in json.loads((folder / "predictions.json").read_text())}
    paths = [shapes_root / "test" / f"{image_id:06d}.png" for image_id in written]
    captioner = Captioner.from_checkpoint(best, device="cpu")
    assert [c.text for c in captioner.caption(paths, beam_size=3)] == list(written.values())
    # Not the greedy captions of the checkpoint's own eval_beam_size 1: the command line's 3 beams decoded them.
    assert [c.text for c in captioner.caption(paths, beam_size=1)] != list(written.values())
    assert yaml.safe_load((folder / "hparams.yaml").read_text())["eval_beam_size"] == 3
    predicted = run_cli(*tiny_args("predict", shapes_root, tmp_path / "predict", *beams))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (folder,) = (tmp_path / "predict" / "shapes").iterdir()
    assert json.loads((folder / "predictions.json").read_text()) == json.loads(
        next((tmp_path / "test" / "shapes").glob("*/predictions.json")).read_text()
    )
