"""The held-out shapes variant's report (`benchmarks/heldout_shapes.py --report`): every reference it writes counts as
a right description of its scene, a caption with a wrong colour or count does not, and the report reads runs' files."""

from __future__ import annotations

import importlib.util
import json
import random

from captioning.data.shapes import write_splits
from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("heldout_shapes", ROOT / "benchmarks" / "heldout_shapes.py")
heldout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heldout)


def _right(caption: str, scene: list[dict], background: str) -> bool:
    return heldout.describes_scene(caption, heldout.true_captions(scene, background))


def test_every_reference_describes_its_scene_right_and_a_wrong_colour_or_count_does_not():
    rng = random.Random(0)
    for _ in range(50):
        _, fields, references = heldout._example(rng, 64)
        scene, background = fields["scene"], fields["background"]
        assert all(_right(reference, scene, background) for reference in references)
        colours = {s["colour"] for s in scene}
        other = next(c for c in heldout.COLOURS if c not in colours)
        wrong_colour = references[0].replace(scene[0]["colour"], other)
        assert not _right(wrong_colour, scene, background)
        fewer = [s for s in scene if (s["colour"], s["kind"]) != (scene[0]["colour"], scene[0]["kind"])]
        if fewer:  # the first group left out: a count (or a group) that is wrong
            assert not _right(references[0], fewer, background)


def test_the_report_scores_the_references_as_right_and_a_wrong_caption_as_wrong(tmp_path):
    write_splits(tmp_path, {"variant": "heldout-test"}, heldout._example, 64, {"test": 12}, seed=7)
    annotations = tmp_path / "annotations" / "captions_test.json"
    data = json.loads(annotations.read_text())
    first = {}
    for annotation in data["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in first.items()]))
    report = heldout.wording_report(annotations, run / "predictions.json")
    assert report["scene_right"] == 1.0 and report["CIDEr_right"] == report["CIDEr"] > 0
    assert report["best_wording"] > 0
    blank = [{"image_id": i, "caption": "nothing at all"} for i in first]
    (run / "predictions.json").write_text(json.dumps(blank))
    report = heldout.wording_report(annotations, run / "predictions.json")
    assert report["scene_right"] == 0.0 and report["CIDEr"] == 0.0
