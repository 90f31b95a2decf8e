"""`captioning evaluate`: a real subprocess on the real fixture files, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.metrics import score_captions
from captioning.metrics.evaluate import main

ROOT = Path(__file__).resolve().parents[2]
FAKECAP = ROOT.parent / "shared" / "data" / "metric-fixtures" / "coco-fakecap126"
GT = FAKECAP / "captions_gt_fakecap126_from_val2017.json"
RESULTS = FAKECAP / "captions_fakecap126_results.json"
FAST = ["--metrics", "BLEU", "ROUGE_L", "CIDEr"]


@pytest.fixture()
def fakecap():
    if not GT.is_file() or not RESULTS.is_file():
        pytest.skip(f"{FAKECAP} is absent (the shared data folder ../shared/data)")
    return json.loads(GT.read_text()), json.loads(RESULTS.read_text())


def references(gt: dict) -> dict:
    out: dict = {}
    for ann in gt["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.slow
def test_cli_subprocess_writes_official_scores(fakecap, tmp_path) -> None:
    official = json.loads((FAKECAP / "scores_pycocoevalcap1.2_fakecap126.json").read_text())
    out, per_image = tmp_path / "scores.json", tmp_path / "per_image.json"
    done = subprocess.run(
        [sys.executable, "-m", "captioning", "evaluate", "--annotations", str(GT), "--results", str(RESULTS)]
        + FAST
        + ["--out", str(out), "--per-image", str(per_image)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "CIDEr" in done.stdout and "0.627722" in done.stdout and "(126 images)" in done.stdout
    scores = json.loads(out.read_text())
    for key, value in scores.items():
        assert value == pytest.approx(official["overall"][key], abs=1e-6)
    rows = json.loads(per_image.read_text())
    assert len(rows) == 126
    for row in rows:
        assert row["CIDEr"] == pytest.approx(official["per_image"][str(row["image_id"])]["CIDEr"], abs=1e-6)


def test_json_output_and_missing_results_warning(fakecap, tmp_path, capsys) -> None:
    gt, results = fakecap
    partial = write(tmp_path / "r.json", results[:100])
    assert main(["--annotations", str(GT), "--results", str(partial), "--json", *FAST]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert captured.err.strip().splitlines() == [
        "warning: 26 of 126 annotated images have no result and are left out; "
        "scoring the 100 images of the results, as coco-caption does"
    ]
    expected = score_captions({r["image_id"]: r["caption"] for r in results[:100]}, references(gt), FAST[1:])
    assert printed == pytest.approx(expected, abs=1e-12)


def test_an_empty_caption_is_scored_as_a_caption_without_words(fakecap, tmp_path, capsys) -> None:
    gt, results = fakecap
    results = [{**results[0], "caption": ""}, {**results[1], "caption": " . "}] + results[2:]
    path, per_image = write(tmp_path / "r.json", results), tmp_path / "per_image.json"
    assert main(["--annotations", str(GT), "--results", str(path), "--json", "--per-image", str(per_image), *FAST]) == 0
    expected = score_captions({r["image_id"]: r["caption"] for r in results}, references(gt), FAST[1:])
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected, abs=1e-12)
    rows = {row["image_id"]: row for row in json.loads(per_image.read_text())}
    for empty in results[:2]:  # pycocoevalcap 1.2 gives 0 here too (BLEU, ROUGE_L, CIDEr and METEOR)
        assert {key: rows[empty["image_id"]][key] for key in expected} == dict.fromkeys(expected, 0.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r + [{"image_id": 123456789, "caption": "a cat"}], "image id 123456789 is not in the annotations"),
        (lambda r: r + [dict(r[0])], "has more than one result"),
        (lambda r: "[{'image_id': 1,", "is not valid JSON"),
        (lambda r: {"annotations": r}, "expected a list of {'image_id', 'caption'} objects"),
        (lambda r: [{"image_id": 1}], "entry 0 needs 'image_id' and 'caption' fields"),
        (lambda r: [{"image_id": r[0]["image_id"], "caption": 5}], "has a caption that is not a string"),
        (lambda r: [], "has no results"),
    ],
)
def test_bad_results_fail_with_one_line(fakecap, tmp_path, capsys, make, message) -> None:
    path = write(tmp_path / "results.json", make(fakecap[1]))
    assert main(["--annotations", str(GT), "--results", str(path), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err and str(path) in err


def test_bad_annotations_and_missing_files(fakecap, tmp_path, capsys) -> None:
    bad = write(tmp_path / "gt.json", {"images": []})
    for args, message in [
        (["--annotations", str(bad), "--results", str(RESULTS)], "expected a COCO captions object"),
        (["--annotations", str(tmp_path / "no.json"), "--results", str(RESULTS)], "not found"),
        (["--annotations", str(GT), "--results", str(tmp_path / "no.json")], "not found"),
        (["--annotations", str(GT), "--results", str(RESULTS), "--metrics", "BLUE"], "unknown metric"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--annotations" in capsys.readouterr().out


def test_results_scored_against_another_splits_references_are_warned_about(fakecap, tmp_path, capsys) -> None:
    gt, results = fakecap
    ids = [r["image_id"] for r in results]
    # the same captions under other images' ids: what results of one split scored against another split look like
    shifted = [{"image_id": ids[(k + 7) % len(ids)], "caption": r["caption"]} for k, r in enumerate(results)]
    assert main(["--annotations", str(GT), "--results", str(write(tmp_path / "r.json", shifted)), *FAST]) == 0
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: the captions share ") and "are the annotations of the results' split" in warning
    assert main(["--annotations", str(GT), "--results", str(RESULTS), *FAST]) == 0  # the right split: no warning
    assert capsys.readouterr().err == ""
