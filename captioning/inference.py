"""Captioning from Python: `Captioner.from_checkpoint(path).caption(images)`.

Takes paths, PIL images or image tensors, preprocesses them as in training (the checkpoint names the encoder),
encodes each image once and decodes greedily with the KV-cached decoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from captioning.checkpoint import load_checkpoint
from captioning.data.transforms import build_transform, load_image, to_rgb
from captioning.model.captioner import CaptioningModel
from captioning.model.generation import greedy_decode
from captioning.text.tokenizer import CaptionTokenizer

ImageInput = str | Path | Image.Image | Tensor


@dataclass
class Caption:
    """A generated caption: its text, token ids, and length-normalised log-probability."""

    text: str
    tokens: list[int]
    score: float


class Captioner:
    """A trained captioning model with its tokenizer and preprocessing, ready to caption images."""

    def __init__(self, model: CaptioningModel, tokenizer: CaptionTokenizer, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.transform = build_transform(model.config.encoder, model.config.image_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> Captioner:
        """Loads a checkpoint written by training (weights only: no code in it is run)."""
        config, tokenizer, state = load_checkpoint(path)
        config.pretrained = False  # the checkpoint holds the trained weights
        model = CaptioningModel(config)
        model.load_state_dict(state)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, tokenizer, device)

    def preprocess(self, image: ImageInput) -> Tensor:
        """A path, PIL image or tensor -> (3, S, S) model input. Tensors (3, H, W) in [0, 1] are resized."""
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if isinstance(image, Image.Image):
            return self.transform(to_rgb(image))
        if isinstance(image, Tensor) and image.ndim == 3 and image.size(0) in (1, 3):
            from torchvision.transforms.functional import to_pil_image

            return self.transform(to_pil_image(image.float().clamp(0, 1).expand(3, -1, -1)))
        raise TypeError(f"cannot caption a {type(image).__name__}: give a path, a PIL image or a (3, H, W) tensor")

    @torch.no_grad()
    def caption(
        self, images: ImageInput | Iterable[ImageInput], max_length: int | None = None, batch_size: int = 32
    ) -> list[Caption]:
        """Captions images (greedy decoding).

        Args:
            images: one image or several: paths, PIL images or (3, H, W) tensors in [0, 1].
            max_length: at most this many tokens per caption (default: the model's limit).
            batch_size: images encoded and decoded together.

        Returns:
            One Caption per image, in order.
        """
        if isinstance(images, (str, Path, Image.Image, Tensor)):
            images = [images]
        images = list(images)
        results = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            results += self._caption_batch(batch.to(self.device), max_length)
        return results

    def _caption_batch(self, batch: Tensor, max_length: int | None) -> Sequence[Caption]:
        memory = self.model.encode(batch)  # (B, M, D)
        tok = self.tokenizer
        generated = greedy_decode(self.model.decoder, memory, tok.bos_id, tok.eos_id, tok.pad_id, max_length)
        captions = []
        for row, score in zip(generated.tokens.tolist(), generated.scores.tolist()):
            ids = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
            ids = [i for i in ids if i != tok.pad_id]
            captions.append(Caption(tok.decode(ids), ids, score))
        return captions
