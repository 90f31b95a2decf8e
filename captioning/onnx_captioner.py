"""Greedy captioning with onnxruntime: the graphs written by `captioning export --format onnx`, no torch model.

The encoder graph projects each decoder layer's cross-attention K, V once per image; the decoder-step graph reads the
newest token against them and against the self-attention KV cache, which this loop carries between steps. Images
go through the training transform itself (it resizes 8-bit pixels with torch ops: a PIL or numpy copy would differ
by a level of 255 here and there, and so would a caption now and then), and the decoding rules are those of
`captioning.model.generation.greedy_decode`, so the captions are the torch model's, token for token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from captioning.data.transforms import build_transform, load_image, to_rgb
from captioning.errors import UserError
from captioning.export import DECODER_STEP, ENCODER, read_export_config


@dataclass
class OnnxCaption:
    """A caption: its text, its word ids (no start or end token), and its mean log-probability per token."""

    text: str
    tokens: list[int]
    score: float


@dataclass
class Greedy:
    """Greedy decoding of a batch: tokens (B, L) padded after the end token, log_probs (B,) and lengths (B,)."""

    tokens: np.ndarray
    log_probs: np.ndarray
    lengths: np.ndarray


class OnnxCaptioner:
    """Captions images with the encoder and decoder-step graphs of an ONNX export folder."""

    def __init__(self, folder: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
        """
        Args:
            folder: written by `captioning export --format onnx`.
            threads: onnxruntime's intra-op threads (default: its own choice).
            providers: onnxruntime execution providers (default: the CPU).
        """
        folder = Path(folder)
        config, self.tokenizer = read_export_config(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = list(providers or ["CPUExecutionProvider"])
        self.encoder = _session(folder / ENCODER, options, providers)
        self.decoder_step = _session(folder / DECODER_STEP, options, providers)
        model_config = config["model_config"]
        try:
            self.max_length = int(model_config["max_length"])
            self.num_layers, self.num_heads = int(model_config["depth"]), int(model_config["num_heads"])
            self.head_dim = int(model_config["dim"]) // self.num_heads
            self.transform = build_transform(model_config["encoder"], model_config.get("image_size"))
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{folder / 'config.json'}: bad or missing model_config field ({error!r})") from None

    def preprocess(self, image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
        """A path, PIL image or (H, W[, C]) uint8 array -> (3, S, S) float32, as `Captioner.preprocess` makes it."""
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"cannot caption a {type(image).__name__}: give a path, a PIL image or a uint8 array")
        return self.transform(to_rgb(image)).numpy()

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, 3, H, W) float32 -> cross-attention keys and values, each (L, B, nh, M, hs)."""
        cross_keys, cross_values = self.encoder.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return cross_keys, cross_values

    def _steps(self, cross_keys: np.ndarray, cross_values: np.ndarray):
        """A generator: send it the tokens (B,) at each position, it yields their next-token logits (B, V)."""
        B = cross_keys.shape[1]
        past_keys = np.zeros((self.num_layers, B, self.num_heads, 0, self.head_dim), dtype=np.float32)
        past_values = past_keys
        tokens = yield
        for position in range(self.max_length):
            feed = {
                "tokens": np.asarray(tokens, dtype=np.int64).reshape(B, 1),
                "position": np.array([position], dtype=np.int64),
                "cross_keys": cross_keys,
                "cross_values": cross_values,
                "past_keys": past_keys,
                "past_values": past_values,
            }
            logits, past_keys, past_values = self.decoder_step.run(None, feed)
            tokens = yield logits

    def teacher_forced_logits(self, images: np.ndarray, tokens: np.ndarray) -> list[np.ndarray]:
        """The logits (B, V) after each of the given tokens (B, T), start token first, read step by step."""
        steps = self._steps(*self.encode(images))
        next(steps)
        return [steps.send(tokens[:, t]) for t in range(tokens.shape[1])]

    def greedy(
        self,
        images: np.ndarray,
        max_length: int | None = None,
        *,
        min_length: int = 0,
        suppress_tokens: Sequence[int] = (),
        no_repeat_ngram_size: int = 0,
    ) -> Greedy:
        """The most probable next token until every caption has ended; the rules of torch's `greedy_decode`.

        Args:
            images: (B, 3, H, W) preprocessed images.
            max_length: at most this many tokens after the start token, end token included (default: the model's).
            min_length: the end token is banned until this many tokens have been generated.
            suppress_tokens: never generated.
            no_repeat_ngram_size: no n-gram of this size occurs twice in a caption (0: no limit).

        Returns:
            Tokens (B, L) after the start token, their summed log-probabilities (B,) and counts (B,).
        """
        tok = self.tokenizer
        max_length = min(max_length or self.max_length, self.max_length)
        steps = self._steps(*self.encode(images))
        next(steps)
        B = images.shape[0]
        generated = np.zeros((B, 0), dtype=np.int64)  # (B, t)
        finished = np.zeros(B, dtype=bool)
        log_probs = np.zeros(B, dtype=np.float32)
        lengths = np.zeros(B, dtype=np.int64)
        token = np.full(B, tok.bos_id, dtype=np.int64)
        for t in range(max_length):
            step_log_probs = _log_softmax(steps.send(token))  # (B, V)
            if t < min_length:
                step_log_probs[:, tok.eos_id] = -np.inf
            if len(suppress_tokens):
                step_log_probs[:, list(suppress_tokens)] = -np.inf
            _ban_repeated_ngrams(step_log_probs, generated, no_repeat_ngram_size)
            token = step_log_probs.argmax(axis=-1)  # (B,)
            chosen = step_log_probs[np.arange(B), token]
            log_probs += np.where(finished, np.float32(0), chosen)
            lengths += ~finished
            token = np.where(finished, tok.pad_id, token)
            generated = np.concatenate([generated, token[:, None]], axis=1)
            finished |= token == tok.eos_id
            if finished.all():
                break
        return Greedy(generated, log_probs, lengths)

    def caption(
        self,
        images: str | Path | Image.Image | np.ndarray | Iterable[str | Path | Image.Image | np.ndarray],
        max_length: int | None = None,
        *,
        min_length: int = 1,
        no_repeat_ngram_size: int = 0,
        suppress_unk: bool = True,
        batch_size: int = 32,
    ) -> list[OnnxCaption]:
        """Greedy captions of images, with the defaults of `Captioner.caption(beam_size=1)`.

        Args:
            images: one or several paths, PIL images or uint8 arrays.
            max_length, min_length, no_repeat_ngram_size: see `greedy`.
            suppress_unk: never generate the unknown-word token.
            batch_size: images encoded and decoded together.

        Returns:
            One caption per image, in order.
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        images, tok = list(images), self.tokenizer
        suppress = [tok.pad_id, tok.bos_id] + ([tok.unk_id] if suppress_unk else [])
        captions = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            rules = dict(min_length=min_length, suppress_tokens=suppress, no_repeat_ngram_size=no_repeat_ngram_size)
            result = self.greedy(batch, max_length, **rules)
            scores = result.log_probs / np.maximum(result.lengths, 1)
            for row, score in zip(result.tokens.tolist(), scores.tolist(), strict=True):
                ids = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
                ids = [i for i in ids if i != tok.pad_id]
                captions.append(OnnxCaption(tok.decode(ids), ids, score))
        return captions


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (write it with `captioning export --format onnx`)")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise UserError(f"{path}: not a readable ONNX graph ({str(error).splitlines()[0]})") from None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in float32, as torch's `logits.float().log_softmax(-1)`."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _ban_repeated_ngrams(log_probs: np.ndarray, generated: np.ndarray, n: int) -> None:
    """Sets -inf (in place) on each token that would repeat an n-gram of its row in `generated` (B, t)."""
    t = generated.shape[1]
    if not n or t < n:
        return
    for row, tokens in enumerate(generated.tolist()):
        prefix = tokens[t - n + 1 :]  # an n-gram ending with the next token starts with these n-1 tokens
        for start in range(t - n + 1):
            if tokens[start : start + n - 1] == prefix:
                log_probs[row, tokens[start + n - 1]] = -np.inf
