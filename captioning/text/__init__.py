"""Text processing: the caption tokenizer."""

from captioning.text.tokenizer import CaptionTokenizer

__all__ = ["CaptionTokenizer"]
