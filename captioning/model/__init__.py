"""Plain-torch captioning model: a timm image encoder and a Transformer text decoder with cross-attention.

This package never imports lightning, so inference and notebooks stay light.
"""

from captioning.model.attention import Attention, KVCache
from captioning.model.captioner import CaptioningModel, ModelConfig
from captioning.model.decoder import DecoderBlock, TextDecoder
from captioning.model.encoder import ImageEncoder

__all__ = ["Attention", "KVCache", "CaptioningModel", "ModelConfig", "DecoderBlock", "TextDecoder", "ImageEncoder"]
