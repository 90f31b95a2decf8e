"""The word rule of a language: how a caption becomes the words that the vocabulary holds and the metrics count.

One setting (`data.language`, kept in the checkpoint with the tokenizer) decides it for training, decoding and scoring:

- "en": PTB tokens, exactly as coco-caption counts them (`captioning.metrics.tokenize`), so English scores as before.
- "zh": jieba words, the convention of the AI Challenger caption benchmark (Wu et al., 2017, "AI Challenger: a
  large-scale dataset for going deeper in image understanding"), whose evaluation segments references and candidates
  with jieba's default mode and then runs coco-caption's BLEU, ROUGE-L and CIDEr-D on the words. Characters would
  need no dictionary, but they make "红色" (red) two units that each mean less than the word.
- "ja": characters. Japanese benchmarks segment with MeCab (STAIR Captions), a compiled analyser with its own
  dictionary; characters need nothing installed and are what character-level evaluations of Japanese use.
- any other code: Unicode words (NFKC, lower-cased, letters and digits joined by inner apostrophes or hyphens:
  "l'été", "s'il", "dziewięć"), punctuation dropped.

Languages written without spaces (zh, ja) join their words without one when a caption is decoded.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence

from captioning.errors import UserError
from captioning.metrics.tokenize import tokenize_captions, tokenize_lines

ENGLISH = "en"
WRITTEN_WITHOUT_SPACES = ("zh", "ja")
_UNICODE_WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")
_PUNCTUATION_OR_SPACE = re.compile(r"^[\W_]+$")  # a token of punctuation, symbols or spaces only


def check_language(language: str) -> str:
    """A language code as the word rule reads it ("zh-CN" -> "zh"); a one-line error for one that is not a code."""
    code = str(language).strip().lower().replace("_", "-").split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise UserError(f"language {language!r}: expected a language code such as 'en', 'zh', 'ja', 'fr'")
    return code


def split_lines(captions: Sequence[str], language: str = ENGLISH) -> list[str]:
    """Each caption's words, joined by single spaces, by the rule of `language`."""
    language = check_language(language)
    if language == ENGLISH:
        return tokenize_lines(list(captions))
    if language == "zh":
        return [" ".join(_jieba_words(caption)) for caption in captions]
    if language == "ja":
        return [" ".join(ch for ch in _normalise(c) if not _PUNCTUATION_OR_SPACE.match(ch)) for c in captions]
    return [" ".join(_UNICODE_WORD.findall(_normalise(caption))) for caption in captions]


def split_captions(captions: Mapping[Hashable, Iterable[str]], language: str = ENGLISH) -> dict[Hashable, list[str]]:
    """`split_lines` over `{image_id: [caption, ...]}`, keeping the images and the order of their captions."""
    if check_language(language) == ENGLISH:
        return tokenize_captions(captions)  # one call: PTB's rules look from one caption into the next
    return {image_id: split_lines(list(group), language) for image_id, group in captions.items()}


def join_words(words: Iterable[str], language: str = ENGLISH) -> str:
    """Words back into a caption: without spaces in Chinese and Japanese, with one elsewhere."""
    return ("" if check_language(language) in WRITTEN_WITHOUT_SPACES else " ").join(words)


def _normalise(caption: str) -> str:
    return unicodedata.normalize("NFKC", caption).lower()


def _jieba_words(caption: str) -> list[str]:
    text = _normalise(caption)
    return [w for w in _jieba().cut(text) if not _PUNCTUATION_OR_SPACE.match(w)]


_JIEBA = None


def _jieba():
    """jieba, loaded once and quietly (it logs its dictionary loading on first use)."""
    global _JIEBA
    if _JIEBA is None:
        try:
            import jieba
        except ImportError:
            raise UserError('Chinese captions are split into words by jieba: pip install -e ".[zh]"') from None
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _JIEBA = jieba
    return _JIEBA
