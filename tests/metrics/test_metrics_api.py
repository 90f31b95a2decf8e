"""score_captions's contract: keys, metric selection, bad input, and metrics that cannot run here."""

from __future__ import annotations

import sys
import warnings

import pytest

from captioning.metrics import CaptionScorer, score_captions

PREDICTIONS = {1: "a cat sitting on a mat.", 2: "Two dogs run in the park"}
REFERENCES = {
    1: ["A cat is sitting on a mat.", "a cat on a red mat", "The cat sits."],
    2: ["two dogs running in a park", "Dogs playing in the grass.", "two brown dogs run"],
    3: ["an unrelated image"],
}


def run(metrics, **kwargs) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_captions(PREDICTIONS, REFERENCES, metrics=metrics, **kwargs)
    return scores, [str(w.message) for w in caught]


def test_keys_and_per_image() -> None:
    scores, messages = run(["bleu", "ROUGE", "CIDEr-D"], per_image=True)
    assert messages == []
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "per_image"]
    assert set(scores["per_image"]) == {1, 2}
    assert set(scores["per_image"][1]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert all(isinstance(v, float) for k, v in scores.items() if k != "per_image")
    assert run(["CIDEr"])[0].keys() == {"CIDEr"}


def test_caption_scorer_equals_score_captions() -> None:
    scorer = CaptionScorer({i: REFERENCES[i] for i in PREDICTIONS}, metrics=["BLEU", "ROUGE_L", "CIDEr"])
    assert scorer.score(PREDICTIONS) == run(["BLEU", "ROUGE_L", "CIDEr"])[0]
    assert scorer.score(PREDICTIONS) == scorer.score(PREDICTIONS)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown metric 'BLUE'"):
        score_captions(PREDICTIONS, REFERENCES, metrics=["BLUE"])
    with pytest.raises(ValueError, match="image id 9 has no references"):
        score_captions({9: "a cat"}, REFERENCES)
    with pytest.raises(ValueError, match="image 1: the prediction must be one caption"):
        score_captions({1: ["a cat", "a dog"]}, REFERENCES)
    with pytest.raises(ValueError, match="image 1: references must be a non-empty list"):
        score_captions({1: "a cat"}, {1: []})
    with pytest.raises(ValueError, match="no predictions"):
        CaptionScorer(REFERENCES).score({})


def test_missing_meteor_jar_is_left_out_with_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CAPTIONING_METEOR_JAR", str(tmp_path / "meteor-1.5.jar"))
    scores, messages = run(["BLEU", "METEOR"])
    assert "METEOR" not in scores and "Bleu_4" in scores
    assert len(messages) == 1 and messages[0].startswith("METEOR left out: METEOR jar (meteor-1.5.jar) not found")
    assert "CAPTIONING_METEOR_JAR" in messages[0] and "coco-eval" in messages[0] and "\n" not in messages[0]


def test_missing_java_is_left_out(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    scores, messages = run(["METEOR", "SPICE", "CIDEr"])
    assert list(scores) == ["CIDEr"]
    assert len(messages) == 2 and all("left out" in m for m in messages)
    assert any(m.startswith("METEOR left out: Java was not found") for m in messages)


def test_spice_without_corenlp_jars_never_downloads(monkeypatch, tmp_path) -> None:
    """A SPICE jar whose lib/ lacks Stanford CoreNLP: reported with the fix, pycocoevalcap's downloader untouched."""
    jar = tmp_path / "spice" / "spice-1.0.jar"
    (jar.parent / "lib").mkdir(parents=True)
    jar.write_bytes(b"")
    monkeypatch.setenv("CAPTIONING_SPICE_JAR", str(jar))
    scores, messages = run(["SPICE", "BLEU"])
    assert "SPICE" not in scores and "Bleu_1" in scores
    assert len(messages) == 1
    assert "stanford-corenlp-3.6.0.jar" in messages[0] and "get_stanford_models" in messages[0]
    assert "pycocoevalcap.spice.get_stanford_models" not in sys.modules
