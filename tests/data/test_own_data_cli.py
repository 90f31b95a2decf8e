"""People's own data through the CLI, as they would run it: a folder of 500 images with metadata.jsonl trains,
validates, tests and writes predictions named by file with the main job's config; so do metadata.csv and Parquet files
with image bytes; and a model that writes one caption for every image is told so."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from captioning.data.shapes import describe, draw_scene, random_scene
from tests.conftest import ROOT, run_cli

SIZE = 64


def _examples(count: int, seed: int = 0):
    """(PNG bytes, five captions) of `count` built-in shapes scenes."""
    rng = random.Random(seed)
    for _ in range(count):
        scene = random_scene(rng, SIZE)
        buffer = io.BytesIO()
        draw_scene(scene, SIZE).save(buffer, format="PNG")
        yield buffer.getvalue(), describe(scene, rng, SIZE)


def _fit(root: Path, run_dir: Path, *extra: str):
    """`captioning fit` of the main job's config on `root`, made short: one epoch, its own run folder."""
    result = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shapes.yaml"), "--data.root", str(root),
        "--trainer.max_epochs=1", "--data.num_workers=0", f"--trainer.logger.init_args.save_dir={run_dir}", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (run_dir / "shapes").iterdir()
    return version, result


def test_a_folder_of_500_images_with_metadata_jsonl_trains_tests_and_names_predictions_by_file(tmp_path):
    root = tmp_path / "my_images"
    rows = []
    for i, (png, captions) in enumerate(_examples(500)):
        file_name = f"scenes/{i // 100}/scene_{i:03d}.png"  # nested folders, as people keep them
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        (root / file_name).write_bytes(png)
        rows.append(json.dumps({"file_name": file_name, "text": captions}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")

    version, _ = _fit(root, tmp_path / "runs", "--data.dataset=folder", "--model.image_size=64")

    splits = json.loads((root / "splits.json").read_text())  # drawn once, written for the next run
    assert [len(splits[s]) for s in ("train", "val", "test")] == [400, 50, 50]
    predictions = json.loads((version / "predictions.json").read_text())
    assert sorted(p["image_id"] for p in predictions) == sorted(splits["test"])
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["images_scored"] == 50 and metrics["CIDEr"] >= 0
    assert 0 < metrics["distinct_captions"] <= 1 and 0 <= metrics["novel_captions"] <= 1 and metrics["mean_length"] > 0
    assert "val/distinct_captions" in (version / "metrics.csv").read_text()  # in the curves too


def test_metadata_csv_in_split_folders_trains_and_one_caption_for_every_image_is_called_a_collapse(tmp_path):
    root = tmp_path / "csv_folder"
    examples = _examples(64, seed=1)
    for split, count in (("train", 40), ("validation", 12), ("test", 12)):
        (root / split).mkdir(parents=True)
        with (root / split / "metadata.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["file_name", "caption"])
            for i in range(count):
                png, _ = next(examples)
                (root / split / f"{i}.png").write_bytes(png)
                writer.writerow([f"{i}.png", "a picture of some shapes"])  # the same caption for every image

    version, result = _fit(root, tmp_path / "runs", "--data.dataset=folder", "--model.image_size=64")

    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["images_scored"] == 12 and metrics["distinct_captions"] < 0.2
    assert "the model writes the same caption for most test images" in result.stderr
    # the main job's config chooses checkpoints by the shapes' own check, which other data has not: CIDEr-D instead
    assert "checkpoint.monitor 'val/position_accuracy' is not logged for this data" in " ".join(result.stderr.split())


def test_parquet_files_with_image_bytes_train_and_predictions_name_the_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "hub_download" / "data"
    root.mkdir(parents=True)
    examples = _examples(64, seed=2)
    names = {}
    for split, count in (("train", 40), ("validation", 12), ("test", 12)):
        images, texts = [], []
        for i in range(count):
            png, captions = next(examples)
            images.append({"bytes": png, "path": f"{split}_{i}.png"})
            texts.append(captions)
        names[split] = [image["path"] for image in images]
        table = pa.table({"image": images, "text": texts})  # as `datasets` writes an Image column and a list column
        pq.write_table(table, root / f"{split}-00000-of-00001.parquet")

    version, _ = _fit(root.parent, tmp_path / "runs", "--data.dataset=parquet", "--model.image_size=64")

    predictions = json.loads((version / "predictions.json").read_text())
    assert sorted(p["image_id"] for p in predictions) == sorted(names["test"])
    assert json.loads((version / "metrics.json").read_text())["images_scored"] == 12
