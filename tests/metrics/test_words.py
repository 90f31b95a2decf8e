"""The word rule of each language: Chinese captions split into jieba's words (the AI Challenger convention), Japanese
into characters, other languages into Unicode words, English exactly as coco-caption's PTB tokenizer; and the
metrics, the tokenizer and `captioning evaluate` all count those words."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from captioning.metrics import score_captions
from captioning.metrics.tokenize import tokenize_lines
from captioning.metrics.words import check_language, join_words, split_lines
from captioning.text.tokenizer import CaptionTokenizer

# Captions as people write them (AI Challenger's style), with jieba's words: its default mode, as the benchmark ran it
# ("上放" is jieba's own reading; a convention is kept as it is, not corrected).
CHINESE = {
    "一个穿着红色衣服的女人在草地上跑步。": "一个 穿着 红色 衣服 的 女人 在 草地 上 跑步",
    "两个男人站在篮球场上打篮球": "两个 男人 站 在 篮球场 上 打篮球",
    "一只小狗趴在沙发上睡觉": "一只 小狗 趴在 沙发 上 睡觉",
    "桌子上放着一碗面条和一双筷子": "桌子 上放 着 一碗 面条 和 一双 筷子",
    "街道上有很多行人和汽车，": "街道 上 有 很多 行人 和 汽车",
    "一个戴着帽子的孩子在海边玩沙子": "一个 戴着 帽子 的 孩子 在 海边 玩 沙子",
}


def test_chinese_captions_split_into_jiebas_words_without_punctuation():
    assert split_lines(list(CHINESE), "zh") == list(CHINESE.values())
    assert split_lines(["图中有一个红色的圆形和两个绿色的三角形。"], "zh-CN") == [
        "图中 有 一个 红色 的 圆形 和 两个 绿色 的 三角形"
    ]


def test_other_languages_split_by_their_rule_and_english_stays_ptb():
    assert split_lines(["猫が テーブルの上に座っている。"], "ja") == ["猫 が テ ー ブ ル の 上 に 座 っ て い る"]
    assert split_lines(["C'est l'été, à Paris!  Très-bien."], "fr") == ["c'est l'été à paris très-bien"]
    assert split_lines(["Ein Mann fährt Fahrrad."], "de") == ["ein mann fährt fahrrad"]
    english = ["There's a man (riding) a horse.", "A dog, and a cat."]
    assert (
        split_lines(english, "en")
        == tokenize_lines(english)
        == ["there 's a man -lrb- riding -rrb- a horse", "a dog and a cat"]
    )
    assert join_words(["一只", "猫"], "zh") == "一只猫" and join_words(["a", "cat"], "fr") == "a cat"
    with pytest.raises(ValueError, match="'english!'"):
        check_language("english!")


def test_chinese_metrics_count_words_so_one_wrong_colour_costs_one_word():
    references = {1: ["图中有一个红色的圆形和两个绿色的三角形。"], 2: ["一只小狗趴在沙发上睡觉"]}
    predictions = {1: "图中有一个蓝色的圆形和两个绿色的三角形。", 2: "一只小狗趴在沙发上睡觉"}
    english_rule = score_captions(predictions, references, metrics=["BLEU"], per_image=True)
    chinese = score_captions(predictions, references, metrics=["BLEU", "CIDEr"], language="zh", per_image=True)
    assert english_rule["per_image"][1]["Bleu_1"] == pytest.approx(0.5)  # PTB: the sentence and its full stop
    assert chinese["per_image"][1]["Bleu_1"] == pytest.approx(10 / 11)  # 10 of its 11 words are right
    assert chinese["per_image"][1]["CIDEr"] > 0


def test_the_tokenizer_keeps_its_language_and_writes_chinese_without_spaces():
    tokenizer = CaptionTokenizer.train(CHINESE, min_frequency=1, language="zh")
    ids = tokenizer.encode(["一只小狗趴在沙发上睡觉"], max_length=20)[0]
    assert ids.tolist()[1:-1] == [tokenizer.tokenizer.token_to_id(w) for w in CHINESE["一只小狗趴在沙发上睡觉"].split()]
    assert tokenizer.decode(ids) == "一只小狗趴在沙发上睡觉"
    again = CaptionTokenizer.from_json(tokenizer.to_json())
    assert again.language == "zh" and again.decode(ids) == "一只小狗趴在沙发上睡觉"
    english = CaptionTokenizer.train(["a red circle"], min_frequency=1)
    assert json.loads(english.to_json())["model"]["type"] == "WordLevel"  # English JSON: the tokenizers format


def test_evaluate_language_flag_scores_chinese_words(tmp_path):
    annotations = {
        "images": [{"id": i} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "一个红色的圆形"},
            {"id": 2, "image_id": 2, "caption": "两个绿色的三角形"},
        ],
    }
    results = [{"image_id": 1, "caption": "一个蓝色的圆形"}, {"image_id": 2, "caption": "两个绿色的三角形"}]
    (tmp_path / "ann.json").write_text(json.dumps(annotations, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "res.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")
    command = [sys.executable, "-m", "captioning", "evaluate", "--annotations", str(tmp_path / "ann.json")]
    command += ["--results", str(tmp_path / "res.json"), "--json", "--language", "zh"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["Bleu_1"] == pytest.approx(7 / 8)  # words: 一个 红色 的 圆形 | 两个 绿色 的 三角形
    assert "METEOR" not in scores and "METEOR and SPICE left out" in done.stderr
