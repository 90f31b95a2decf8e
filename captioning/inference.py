"""Captioning from Python: `Captioner.from_checkpoint(path).caption(images)`.

Takes paths, PIL images, arrays and image tensors, preprocesses them as in training (the checkpoint names the
encoder), encodes each image once and decodes with the KV-cached decoder as the checkpoint's `DecodeSpec` says (the
greedy decoding or beam search, Wu et al., 2016, that its test scored) unless told otherwise, or by nucleus sampling
(Holtzman et al., 2020). On request each caption carries its cross-attention maps on the encoder's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from captioning.checkpoint import checkpoint_spec, load_checkpoint
from captioning.data.transforms import build_transform, data_config, load_image, to_rgb
from captioning.decoding import DecodeSpec, Generated
from captioning.decoding.search import caption_rows
from captioning.errors import UserError
from captioning.model.captioner import CaptioningModel
from captioning.model.generation import decode
from captioning.model.scoring import score_tokens
from captioning.text.tokenizer import CaptionTokenizer

ImageInput = str | Path | Image.Image | np.ndarray | Tensor


@dataclass
class Caption:
    """A generated caption.

    Attributes:
        text: the caption.
        tokens: its word ids, without start and end tokens.
        score: its length-normalised log-probability, log P(words + end token) / (number of words + 1): the mean
            log-probability per generated token, end token included (what beam search ranks by when
            length_penalty is 1.0). A caption cut at max_length has no end token and divides by max_length.
        words: the word of each token, as the text spells it (labels for attention maps).
        cross_attention: with return_attention, (L, nh, T, H, W) float tensor: for each layer, head and word,
            the attention weights on the memory tokens of the encoder's grid (H, W). These are the raw softmax
            weights, not renormalised: with `prefix_attention` they sum to 1 over the whole memory.
        prefix_attention: with return_attention, (L, nh, T, P) the weights on the P memory tokens that are off the
            grid: the model's sink (`model.memory_sink`), then a ViT's class and register tokens.
        ended: False when decoding hit the length limit before the end token: the cheapest sign that an image is
            unlike the training data (a shapes model given a photo writes "large large large ...").
    """

    text: str
    tokens: list[int]
    score: float
    words: list[str] = field(default_factory=list)
    cross_attention: Tensor | None = field(default=None, repr=False, compare=False)
    prefix_attention: Tensor | None = field(default=None, repr=False, compare=False)
    ended: bool = True

    @property
    def attention_map(self) -> Tensor | None:
        """(T, H, W) the cross-attention on the grid averaged over layers and heads, one map per word."""
        return None if self.cross_attention is None else self.cross_attention.mean(dim=(0, 1))


@dataclass
class CaptionScore:
    """How probable the model finds a given caption of an image (teacher-forced, nothing decoded).

    Attributes:
        text: the caption as given.
        log_prob: log P(words + end token | image), summed: comparable between captions of equal length, and what
            `Caption.score` averages for a generated caption.
        token_log_probs: log P of each word and of the end token, in order.
        words: the words the model read (an out-of-vocabulary word reads as `<unk>`), end token not included.
    """

    text: str
    log_prob: float
    token_log_probs: list[float]
    words: list[str]

    @property
    def mean_log_prob(self) -> float:
        """log_prob per token, end token included: comparable between captions of different lengths."""
        return self.log_prob / max(1, len(self.token_log_probs))


class Captioner:
    """A trained captioning model with its tokenizer and preprocessing, ready to caption images."""

    def __init__(
        self,
        model: CaptioningModel,
        tokenizer: CaptionTokenizer,
        device: str | torch.device = "cpu",
        spec: DecodeSpec | None = None,
    ):
        """
        Args:
            model, tokenizer: the trained model and its tokenizer.
            device: where the model runs.
            spec: how `caption` decodes by default (default: `DecodeSpec()`, beam search with 3 beams).
        """
        self.device = torch.device(device)
        self.spec = spec or DecodeSpec()
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.transform = build_transform(model.config.encoder, model.config.image_size)
        config = data_config(model.config.encoder, model.config.image_size)
        interpolation = T.InterpolationMode(config.get("interpolation", "bicubic"))
        self.tensor_transform = T.Compose(
            [T.Resize(config["input_size"][-2:], interpolation=interpolation, antialias=True),
             T.Normalize(config["mean"], config["std"])]
        )  # fmt: skip

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> Captioner:
        """Loads a checkpoint written by training (weights only: no code in it is run), with its decoding spec.

        Args:
            path: the checkpoint file.
            device: e.g. "cpu" or "cuda" (default: cuda when available).
        """
        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as error:
            raise UserError(f"unknown device '{device}' ({error})") from None
        config, tokenizer, state = load_checkpoint(path)
        config.pretrained = False  # the checkpoint holds the trained weights
        model = CaptioningModel(config)
        model.load_state_dict(state)
        return cls(model, tokenizer, device, checkpoint_spec(path))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None) -> Captioner:
        """Loads a folder written by `captioning export --format safetensors` (nothing is unpickled), with its spec.

        Args:
            folder: holds model.safetensors, config.json and tokenizer.json.
            device: e.g. "cpu" or "cuda" (default: cuda when available).
        """
        from captioning.export import load_pretrained_model  # the export format lives beside its writer
        from captioning.export_format import export_spec, read_export_config

        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as error:
            raise UserError(f"unknown device '{device}' ({error})") from None
        model, tokenizer = load_pretrained_model(folder)
        return cls(model, tokenizer, device, export_spec(read_export_config(folder)[0], folder))

    def preprocess(self, image: ImageInput) -> Tensor:
        """One image -> (3, S, S) model input.

        Args:
            image: a path; a PIL image of any mode; an (H, W) or (H, W, C) uint8 array; or a (3, H, W), (1, H, W)
                or (H, W) tensor, float in [0, 1] or uint8 in [0, 255] (not normalised: that is done here).
        """
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            return self.transform(to_rgb(image))
        if isinstance(image, Tensor) and image.ndim == 2:  # (H, W) grayscale
            image = image[None]  # (1, H, W)
        if isinstance(image, Tensor) and image.ndim == 3 and image.size(0) in (1, 3):
            image = image.detach().cpu()  # batches are stacked on the CPU, whatever each image came on
            if image.dtype == torch.uint8:
                image = image.float() / 255
            elif not image.is_floating_point() or image.min() < 0 or image.max() > 1 or not image.isfinite().all():
                raise UserError("image tensors must be float in [0, 1] or uint8 in [0, 255]")
            return self.tensor_transform(image.float().expand(3, -1, -1))  # (1 or 3, H, W) -> (3, S, S)
        shape = f" of shape {tuple(image.shape)}" if isinstance(image, Tensor) else ""
        raise TypeError(
            f"cannot caption a {type(image).__name__}{shape}: give a path, a PIL image, an array, "
            "or a (3, H, W) or (B, 3, H, W) tensor"
        )

    @torch.no_grad()
    def caption(
        self,
        images: ImageInput | Iterable[ImageInput],
        beam_size: int | None = None,
        max_length: int | None = None,
        *,
        spec: DecodeSpec | None = None,
        min_length: int | None = None,
        length_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        suppress_unk: bool | None = None,
        sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 32,
        return_attention: bool = False,
        on_step: Callable[[list[Caption]], None] | None = None,
    ) -> list[Caption]:
        """Captions images as the checkpoint's decoding spec says (`self.spec`), or as the options given here say.

        Args:
            images: one image or several: paths, PIL images, arrays, (3, H, W) tensors or a (B, 3, H, W) tensor.
            beam_size: beams per image; 1 is greedy decoding. Ignored when sampling.
            max_length: at most this many tokens per caption, end token included (default: the model's limit).
            spec: the decoding spec to start from, instead of `self.spec`; the options below change it.
            min_length, length_penalty, no_repeat_ngram_size, suppress_unk, temperature, top_k, top_p, seed: the
                fields of `DecodeSpec` (None: the spec's).
            sample: draw each caption from the model instead of searching (nucleus sampling).
            batch_size: images encoded and decoded together; results do not depend on it, except when sampling.
            return_attention: also fill `cross_attention` and `prefix_attention` of each Caption.
            on_step: streaming: after every step, sees each image of the batch as a Caption of the words so far (the
                best live beam's; score 0), with attention when `return_attention`: the maps of the final caption.

        Returns:
            One Caption per image, in order (a list, also for one image).
        """
        options = dict(max_length=max_length, min_length=min_length, length_penalty=length_penalty, top_p=top_p)
        options.update(no_repeat_ngram_size=no_repeat_ngram_size, suppress_unk=suppress_unk, seed=seed)
        spec = (spec or self.spec).with_options(beam_size, sample, temperature=temperature, top_k=top_k, **options)
        images, _ = _image_list(images)
        rng = np.random.default_rng(spec.seed) if spec.seed is not None else None  # one stream for all batches
        results = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            memory = self.model.encode(batch.to(self.device))  # (B, M, D)
            step = None
            if on_step is not None:
                step = lambda tokens, memory=memory: on_step(self._so_far(memory, tokens, return_attention))  # noqa: E731
            generated = decode(self.model.decoder, memory, spec, self.tokenizer, rng=rng, on_step=step)
            captions = self._to_captions(generated)
            if return_attention:
                self._add_attention(memory, captions)
            results += captions
        return results

    @torch.no_grad()
    def score(
        self,
        images: ImageInput | Iterable[ImageInput],
        captions: str | Sequence[str] | Sequence[str | Sequence[str]],
        batch_size: int = 32,
    ) -> list[CaptionScore] | list[CaptionScore | list[CaptionScore]]:
        """The teacher-forced log-probability of given captions for given images: re-ranking, filtering, probes.

        Each image is encoded once for all of its captions; nothing is decoded.

        Args:
            images: one image, or several (as `caption` takes them).
            captions: for one image, a caption or a list of its captions; for several images, one entry per
                image, each a caption or a list of any number of captions.
            batch_size: images scored together; results do not depend on it.

        Returns:
            For one image, a CaptionScore or a list of them, matching `captions`; for several images, one entry per
            image, each a CaptionScore or a list of them.
        """
        images, single = _image_list(images)
        if single:
            captions = [captions]
        if isinstance(captions, str) or len(captions) != len(images):
            count = 1 if isinstance(captions, str) else len(captions)
            raise UserError(f"score: {len(images)} images but captions for {count}: give one entry per image")
        grouped = [[c] if isinstance(c, str) else list(c) for c in captions]
        results: list[list[CaptionScore]] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            memory = self.model.encode(batch.to(self.device))  # (B, M, D), once for all captions of an image
            texts = [text for group in grouped[start : start + batch_size] for text in group]
            counts = [len(group) for group in grouped[start : start + batch_size]]
            results += _split(self._score_texts(memory, texts, counts), counts)
        results = [group[0] if isinstance(c, str) else group for c, group in zip(captions, results, strict=True)]
        return results[0] if single else results

    def _score_texts(self, memory: Tensor, texts: list[str], counts: list[int]) -> list[CaptionScore]:
        if not texts:
            return []
        tok, limit = self.tokenizer, self.model.decoder.max_length
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"score: captions must be strings, got {type(text).__name__}")
        tokens = tok.encode(texts, max_length=10**6)  # (N, T+1), never cut: a cut caption would score a fake end
        lengths = (tokens != tok.pad_id).sum(dim=1) - 1  # words + end token
        too_long = int(lengths.argmax())
        if lengths[too_long] > limit:
            raise UserError(
                f"score: caption {texts[too_long]!r} has {int(lengths[too_long]) - 1} words; the model reads at most "
                f"{limit - 1} (model max_length {limit}, end token included)"
            )
        owners = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(self.device)
        scores = score_tokens(self.model.decoder, memory, tokens.to(self.device), owners, tok.pad_id)
        results = []
        for i, text in enumerate(texts):
            n = int(scores.lengths[i])
            words = [tok.id_to_word(t) for t in tokens[i, 1:n].tolist()]
            per_token = scores.token_log_probs[i, :n].tolist()
            results.append(CaptionScore(text, float(scores.log_probs[i]), per_token, words))
        return results

    def _to_captions(self, generated: Generated) -> list[Caption]:
        tok = self.tokenizer
        return [
            Caption(tok.decode(ids), ids, score, [tok.id_to_word(i) for i in ids], ended=ended)
            for ids, score, ended in caption_rows(generated, tok)
        ]

    def _so_far(self, memory: Tensor, tokens: Tensor, attention: bool) -> list[Caption]:
        """The captions of the tokens (B, t) written so far; with their attention, which causal attention keeps as the
        final caption's for the words written."""
        B = len(tokens)
        captions = self._to_captions(Generated(tokens, torch.zeros(B), torch.ones(B, dtype=torch.long)))
        if attention:
            self._add_attention(memory, captions)
        return captions

    def _add_attention(self, memory: Tensor, captions: list[Caption]) -> None:
        """Re-reads each chosen caption with explicit attention weights and maps them onto the encoder's grid."""
        B, M = memory.size(0), memory.size(1)
        (H, W), P = self.model.encoder.grid_size, self.model.num_prefix_tokens
        if P + H * W != M:
            raise RuntimeError(f"memory of {M} tokens does not match the encoder's grid {H}x{W} + {P} tokens before it")
        width = max(1, max(len(c.tokens) for c in captions))
        # Word i is predicted at position i from the start token and words before it: [BOS] w1 .. w_{T-1}.
        inputs = torch.full((B, width), self.tokenizer.pad_id, dtype=torch.long, device=memory.device)  # (B, T)
        inputs[:, 0] = self.tokenizer.bos_id
        for b, caption in enumerate(captions):
            inputs[b, 1 : len(caption.tokens)] = torch.tensor(caption.tokens[:-1], dtype=torch.long)
        _, _, cross = self.model.decoder.forward_with_attention(inputs, memory)  # (L, B, nh, T, M)
        for b, caption in enumerate(captions):
            weights = cross[:, b, :, : len(caption.tokens)].float().cpu()  # (L, nh, T, M)
            caption.prefix_attention = weights[..., :P]  # (L, nh, T, P)
            caption.cross_attention = weights[..., P:].unflatten(-1, (H, W))  # (L, nh, T, H*W) -> (L, nh, T, H, W)


def _split(items: list, counts: list[int]) -> list[list]:
    """Consecutive groups of `counts` items."""
    ends = np.cumsum([0, *counts])
    return [items[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _image_list(images: ImageInput | Iterable[ImageInput]) -> tuple[list[ImageInput], bool]:
    """One image or several (a (B, 3, H, W) tensor counts as B) -> a list of single images, and whether one was
    given alone."""
    alone = (str, Path, Image.Image, np.ndarray)
    single = isinstance(images, alone) or (isinstance(images, Tensor) and images.ndim < 4)
    items = [images] if single else images
    return [one for item in items for one in (item.unbind(0) if _is_batch(item) else [item])], single


def _is_batch(item: object) -> bool:
    return isinstance(item, Tensor) and item.ndim == 4
