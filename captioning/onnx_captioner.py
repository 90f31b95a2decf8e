"""Captioning with onnxruntime and NumPy only: the graphs written by `captioning export --format onnx`, no torch.

The encoder graph projects each decoder layer's cross-attention K, V once per image; the decoder-step graph reads the
newest token against them and against the self-attention KV cache, which `OnnxStepper` carries and reorders. Images
go through `captioning.images.preprocess` (torch's transform, to the last bit) and decoding through
`captioning.decoding.generate`, torch's own: greedy, beam search and seeded sampling write the torch model's captions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from captioning.decoding import DecodeSpec, generate
from captioning.decoding.ops import NUMPY
from captioning.decoding.search import caption_rows
from captioning.errors import UserError
from captioning.export_format import CONFIG, DECODER_STEP, ENCODER, export_spec, read_export_config
from captioning.images import load_image, preprocess

OnnxImage = str | Path | Image.Image | np.ndarray


@dataclass
class OnnxCaption:
    """A caption as `captioning.inference.Caption` has it: text, word ids, score, and whether it ended."""

    text: str
    tokens: list[int]
    score: float
    ended: bool = True


class OnnxStepper:
    """The `captioning.decoding.Stepper` of the decoder-step graph, for images encoded once."""

    ops = NUMPY

    def __init__(self, session: ort.InferenceSession, cross_keys: np.ndarray, cross_values: np.ndarray, max_length):
        self.session, self.cross, self.past = session, (cross_keys, cross_values), None  # K, V: (L, B, nh, M, hs)
        self.num_images, self.max_length = cross_keys.shape[1], max_length

    def __call__(self, history: np.ndarray) -> np.ndarray:
        R = history.shape[0]
        if self.past is None:  # the graph has one batch axis: each image's K, V for each of its rows
            self.cross = [np.repeat(x, R // self.num_images, axis=1) for x in self.cross]  # (L, R, nh, M, hs)
            self.past = [np.zeros((*self.cross[0].shape[:3], 0, self.cross[0].shape[4]), np.float32)] * 2
        logits, *self.past = self.session.run(None, {
            "tokens": np.ascontiguousarray(history[:, -1:], dtype=np.int64),  # (R, 1) the newest token
            "position": np.array([history.shape[1] - 1], dtype=np.int64),
            "cross_keys": self.cross[0], "cross_values": self.cross[1],
            "past_keys": self.past[0], "past_values": self.past[1],
        })  # fmt: skip
        shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)  # (R, V) -> log-softmax, float32
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    def reorder(self, rows: np.ndarray) -> None:
        self.past = [cache[:, rows] for cache in self.past]  # (L, R, nh, S, hs)


class OnnxCaptioner:
    """Captions images with the graphs of the export `folder`, on onnxruntime's `threads` (default: its choice) and
    execution `providers` (default: the CPU)."""

    def __init__(self, folder: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
        folder = Path(folder)
        config, self.tokenizer = read_export_config(folder)
        self.spec = export_spec(config, folder)  # the checkpoint's: what `caption` does unless told otherwise
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        providers = list(providers or ["CPUExecutionProvider"])
        self.encoder = _session(folder / ENCODER, options, providers)
        self.decoder_step = _session(folder / DECODER_STEP, options, providers)
        try:
            self.max_length, given = int(config["model_config"]["max_length"]), config["preprocess"]
            self.input = dict(size=tuple(given["input_size"][-2:]), mean=given["mean"], std=given["std"])
            self.input["interpolation"] = str(given["interpolation"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{folder / CONFIG}: bad or missing model_config or preprocess field ({error!r})") from None

    def preprocess(self, image: OnnxImage) -> np.ndarray:
        """A path, PIL image or (H, W[, C]) uint8 array -> (3, S, S) float32, as `Captioner.preprocess` makes it."""
        image = load_image(image) if isinstance(image, (str, Path)) else image
        image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        if not isinstance(image, Image.Image):
            raise TypeError(f"cannot caption a {type(image).__name__}: give a path, a PIL image or a uint8 array")
        return preprocess(image, **self.input)

    def stepper(self, images: np.ndarray) -> OnnxStepper:
        """Preprocessed images (B, 3, H, W), encoded once, as a stepper over their captions."""
        cross_keys, cross_values = self.encoder.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return OnnxStepper(self.decoder_step, cross_keys, cross_values, self.max_length)

    def caption(
        self,
        images: OnnxImage | Iterable[OnnxImage],
        beam_size: int | None = None,
        max_length: int | None = None,
        *,
        spec: DecodeSpec | None = None,
        batch_size: int = 32,
        **fields,
    ) -> list[OnnxCaption]:
        """One caption per image, as `Captioner.caption` writes it: `beam_size`, `max_length`, `spec`, `sample` and
        the `DecodeSpec` fields (min_length, top_p, seed, ...) change the export's spec, as there."""
        spec = (spec or self.spec).with_options(beam_size, max_length=max_length, **fields)
        images = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
        rng = np.random.default_rng(spec.seed) if spec.seed is not None else None  # one stream for all batches
        captions = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            rows = caption_rows(generate(self.stepper(batch), spec, self.tokenizer, rng), self.tokenizer)
            captions += [OnnxCaption(self.tokenizer.decode(ids), ids, score, ended) for ids, score, ended in rows]
        return captions


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (write it with `captioning export --format onnx`)")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise UserError(f"{path}: not a readable ONNX graph ({str(error).splitlines()[0]})") from None
