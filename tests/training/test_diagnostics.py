"""Caption diagnostics: how varied a split's captions are, counted in the language's words, and the one-line warning
when a model writes the same caption for most images (and not for a model that looks at its images)."""

from __future__ import annotations

import pytest

from captioning.text.tokenizer import CaptionTokenizer
from captioning.training.diagnostics import caption_diagnostics, collapse_warning


def test_diagnostics_count_distinct_captions_words_used_length_and_novelty():
    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square", "a red square above a blue circle"], 1)
    captions = {1: "a red circle", 2: "a red circle", 3: "a blue square", 4: "a red circle above a blue circle"}
    scores = caption_diagnostics(captions, tokenizer, training_captions={"a red circle", "a blue square"})
    assert scores["distinct_captions"] == pytest.approx(3 / 4)
    assert scores["vocabulary_used"] == pytest.approx(6 / 6)  # a red circle blue square above: all 6 words
    assert scores["mean_length"] == pytest.approx((3 + 3 + 3 + 7) / 4)
    assert scores["novel_captions"] == pytest.approx(1 / 4)
    assert "novel_captions" not in caption_diagnostics(captions, tokenizer)  # no training captions known


def test_chinese_captions_are_counted_in_jieba_words():
    tokenizer = CaptionTokenizer.train(["一个红色的圆形", "一个蓝色的正方形"], 1, language="zh")
    scores = caption_diagnostics({1: "一个红色的圆形", 2: "一个红色的圆形"}, tokenizer)
    assert scores["mean_length"] == 4 and scores["distinct_captions"] == 0.5  # 一个 红色 的 圆形
    assert scores["vocabulary_used"] == pytest.approx(4 / 6)


def test_the_collapse_warning_names_the_split_and_fires_only_below_a_fifth():
    assert "most val images (only 10% of 20 captions differ)" in collapse_warning("val", {"distinct_captions": 0.1}, 20)
    assert collapse_warning("val", {"distinct_captions": 0.2}, 20) is None
    assert collapse_warning("val", {"distinct_captions": 0.1}, 5) is None  # too few images to say


def test_a_trained_model_is_not_called_collapsed(captioner, test_images):
    captions = {i: c.text for i, c in enumerate(captioner.caption(test_images))}
    scores = caption_diagnostics(captions, captioner.tokenizer)
    assert scores["distinct_captions"] > 0.2 and collapse_warning("test", scores, len(captions)) is None
