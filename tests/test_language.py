"""A checkpoint keeps its captions' language: a Chinese model read back from its file captions in Chinese, words
joined without spaces (what `captioning caption`, `serve` and the demo page show), and scores its own captions."""

from __future__ import annotations

import json
import random

import torch

from captioning.caption import main as caption_main
from captioning.checkpoint import checkpoint_metadata
from captioning.data.shapes import draw_scene, random_scene
from captioning.data.shapes_zh import describe_zh
from captioning.files import write_json
from captioning.inference import Captioner
from captioning.metrics.words import split_lines
from captioning.model import CaptioningModel, ModelConfig
from captioning.text.tokenizer import CaptionTokenizer
from tests.conftest import TINY_MODEL


def test_a_chinese_checkpoint_captions_in_chinese_words_without_spaces(tmp_path, capsys):
    rng = random.Random(0)
    scenes = [random_scene(rng, 64) for _ in range(20)]
    captions = [caption for scene in scenes for caption in describe_zh(scene, rng, 64)]
    tokenizer = CaptionTokenizer.train(captions, min_frequency=1, language="zh")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_MODEL)
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in CaptioningModel(config).state_dict().items()}
    path = tmp_path / "zh.ckpt"
    torch.save({"captioning": checkpoint_metadata(config, tokenizer), "state_dict": state}, path)

    captioner = Captioner.from_checkpoint(path, device="cpu")
    assert captioner.tokenizer.language == "zh"
    images = [draw_scene(scene, 64) for scene in scenes[:3]]
    for caption in captioner.caption(images, beam_size=1, min_length=3):
        assert caption.text and " " not in caption.text and "".join(caption.words) == caption.text
    scored = captioner.score(images[0], [captions[0]])[0]  # a reference, read in jieba's words
    assert scored.words == split_lines([captions[0]], "zh")[0].split() and len(scored.words) > 3

    # Written as the characters themselves, not \u escapes: a person reads JSON lines and predictions.json too.
    image = tmp_path / "scene.png"
    images[0].save(image)
    assert caption_main(["--checkpoint", str(path), "--format", "jsonl", "--beam-size", "1", str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["caption"] in line and "\\u" not in line
    written = write_json(tmp_path / "predictions.json", [{"caption": json.loads(line)["caption"]}]).read_text("utf-8")
    assert json.loads(line)["caption"] in written
