"""Every metric against the official pycocoevalcap 1.2 scores stored in ../shared/data/metric-fixtures."""

from __future__ import annotations

import warnings

import pytest

from captioning.metrics import score_captions
from captioning.metrics.java import Unavailable
from captioning.metrics.meteor import find_meteor, meteor_score_sets
from captioning.metrics.tokenize import tokenize_captions

EXACT = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


def meteor_available() -> bool:
    try:
        find_meteor()
    except Unavailable:
        return False
    return True


def fixture_sets(metric_fixture) -> dict[str, tuple[dict, dict, dict]]:
    """name -> (candidates, references, official scores)."""
    sets = {
        "fakecap126": (
            metric_fixture("coco-fakecap126", "cands126.json"),
            metric_fixture("coco-fakecap126", "refs126.json"),
            metric_fixture("coco-fakecap126", "scores_pycocoevalcap1.2_fakecap126.json"),
        )
    }
    refs = metric_fixture("clipscore-example", "refs.json")
    for kind in ("good", "bad"):
        cands = metric_fixture("clipscore-example", f"{kind}_captions.json")
        sets[f"clipscore-{kind}"] = (
            cands,
            refs,
            metric_fixture("clipscore-example", f"scores_pycocoevalcap1.2_{kind}.json"),
        )
    return sets


def check(scores: dict, official: dict, keys: list[str], tol: float) -> None:
    for key in keys:
        assert scores[key] == pytest.approx(official["overall"][key], abs=tol), key
        for image_id, per_image in official["per_image"].items():
            assert scores["per_image"][image_id][key] == pytest.approx(per_image[key], abs=tol), (key, image_id)


@pytest.mark.parametrize("name", ["fakecap126", "clipscore-good", "clipscore-bad"])
def test_bleu_rouge_cider_equal_official(metric_fixture, name: str) -> None:
    cands, refs, official = fixture_sets(metric_fixture)[name]
    scores = score_captions(cands, refs, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
    check(scores, official, EXACT, 1e-6)
    assert set(scores) == set(EXACT) | {"per_image"}


def test_tokenized_text_equals_official(metric_fixture) -> None:
    cands, refs, official = fixture_sets(metric_fixture)["fakecap126"]
    assert tokenize_captions(refs) == official["tokenized_refs"]
    assert tokenize_captions({i: [c] for i, c in cands.items()}) == official["tokenized_cands"]


@pytest.mark.slow
def test_all_metrics_equal_official_and_spice_absence_is_reported(metric_fixture, monkeypatch, tmp_path) -> None:
    """score_captions with every metric: METEOR through the jar (one JVM), SPICE reported missing."""
    if not meteor_available():
        pytest.skip("METEOR needs Java and pycocoevalcap's meteor-1.5.jar")
    monkeypatch.setenv("CAPTIONING_SPICE_JAR", str(tmp_path / "nowhere" / "spice-1.0.jar"))  # never a download
    cands, refs, official = fixture_sets(metric_fixture)["fakecap126"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_captions(cands, refs, per_image=True)
    check(scores, official, EXACT, 1e-6)
    check(scores, official, ["METEOR"], 1e-4)
    assert "SPICE" not in scores
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("SPICE left out") and "\n" not in messages[0]


@pytest.mark.slow
def test_meteor_of_the_clipscore_examples(metric_fixture) -> None:
    if not meteor_available():
        pytest.skip("METEOR needs Java and pycocoevalcap's meteor-1.5.jar")
    sets = fixture_sets(metric_fixture)
    jobs, officials = [], []
    for name in ("clipscore-good", "clipscore-bad"):
        cands, refs, official = sets[name]
        ids = list(cands)
        tokenized_refs = tokenize_captions({i: refs[i] for i in ids})
        tokenized_cands = tokenize_captions({i: [cands[i]] for i in ids})
        jobs.append(([tokenized_cands[i][0] for i in ids], [tokenized_refs[i] for i in ids]))
        officials.append((ids, official))
    for (score, per_image), (ids, official) in zip(meteor_score_sets(jobs), officials, strict=True):
        assert score == pytest.approx(official["overall"]["METEOR"], abs=1e-4)
        for image_id, value in zip(ids, per_image, strict=True):
            assert value == pytest.approx(official["per_image"][image_id]["METEOR"], abs=1e-4)
