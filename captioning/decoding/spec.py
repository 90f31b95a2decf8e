"""`DecodeSpec`: every decoding choice in one frozen object, and the one implementation of its token rules.

As Hugging Face's `GenerationConfig` with its logits processors: the spec says greedy, beam search or sampling and
how, and `DecodeSpec.mask` is the only code that bans tokens (padding, start, unknown, an early end, a repeated
n-gram), for every backend and caller: validation, test, SCST, the Python API, the CLI, the server and ONNX.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from captioning.errors import UserError

MODES = ("greedy", "beam", "sample")


class TokenIds(NamedTuple):
    """The special tokens decoding needs (a `CaptionTokenizer` has the same attributes)."""

    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int | None = None


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode captions.

    Attributes:
        mode: "greedy", "beam" (beam search) or "sample".
        beam_size: live beams per image in beam mode (1 decodes greedily).
        length_penalty: alpha in log P / length^alpha, the ranking of finished beams (1.0: mean log-prob per token).
        include_greedy: beam mode also decodes each image's greedy caption as a candidate (see `beam_search`).
        max_length: at most this many tokens after the start token, end token included (None: the model's limit).
        min_length: the end token is banned until this many words have been written.
        suppress_unk: never write the unknown-word token.
        suppress_tokens: other token ids never written (padding and start never are).
        no_repeat_ngram_size: no n-gram of this size occurs twice in a caption (0: no limit).
        num_samples: captions drawn per image, in consecutive rows (sample mode).
        temperature: divides the log-probabilities before sampling (< 1 sharper, > 1 flatter).
        top_k: sample among the k most probable tokens only (0: all).
        top_p: sample among the most probable tokens whose mass reaches p (1.0: all).
        seed: seeds sampling, which then draws the same captions with torch and with onnxruntime (None: random).
    """

    mode: str = "beam"
    beam_size: int = 3
    length_penalty: float = 1.0
    include_greedy: bool = True
    max_length: int | None = None
    min_length: int = 1
    suppress_unk: bool = True
    suppress_tokens: tuple[int, ...] = ()
    no_repeat_ngram_size: int = 0
    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        whole = lambda value, low: isinstance(value, int) and not isinstance(value, bool) and value >= low  # noqa: E731
        number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
        for name, valid, wanted in [
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("beam_size", whole(self.beam_size, 1), "an integer >= 1"),
            ("max_length", self.max_length is None or whole(self.max_length, 1), "an integer >= 1"),
            ("min_length", whole(self.min_length, 0), "an integer >= 0"),
            ("no_repeat_ngram_size", whole(self.no_repeat_ngram_size, 0), "an integer >= 0"),
            ("num_samples", whole(self.num_samples, 1), "an integer >= 1"),
            ("temperature", number(self.temperature) and self.temperature > 0, "positive (greedy is temperature 0)"),
            ("top_k", whole(self.top_k, 0), "an integer >= 0"),
            ("top_p", number(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("seed", self.seed is None or whole(self.seed, 0), "an integer >= 0"),
        ]:
            if not valid:
                raise UserError(f"decoding field '{name}' must be {wanted}, got {getattr(self, name)!r}")

    @classmethod
    def beams(cls, beam_size: int, **fields: Any) -> DecodeSpec:
        """Beam search with `beam_size` beams; 1 is greedy decoding."""
        return cls(mode="greedy" if beam_size == 1 else "beam", beam_size=beam_size, **fields)

    def with_options(self, beam_size: int | None = None, sample: bool | None = None, **fields: Any) -> DecodeSpec:
        """This spec with a caller's options (None: not given): `beam_size` picks greedy (1) or beam search, `sample`
        sampling, and the other fields replace their namesakes."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"unknown decoding field(s): {', '.join(unknown)}")
        spec = dataclasses.replace(self, **{name: value for name, value in fields.items() if value is not None})
        if sample:
            return dataclasses.replace(spec, mode="sample")
        if beam_size is None and sample is False and spec.mode == "sample":
            beam_size = spec.beam_size
        if beam_size is None:
            return spec
        return dataclasses.replace(spec, mode="greedy" if beam_size == 1 else "beam", beam_size=beam_size)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "suppress_tokens": list(self.suppress_tokens)}

    @classmethod
    def from_dict(cls, values: dict, source: str = "decoding spec") -> DecodeSpec:
        """The spec a checkpoint or an export folder stores; errors name `source`."""
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a dictionary of decoding fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"{source}: unknown decoding field(s): {', '.join(unknown)}")
        try:
            return cls(**values)
        except UserError as error:
            raise UserError(f"{source}: {error}") from None

    def never(self, ids: TokenIds) -> list[int]:
        """Tokens no caption may contain: padding and start are not words, and an unknown word is no answer."""
        unk = [ids.unk_id] if self.suppress_unk and ids.unk_id is not None else []
        return [ids.pad_id, ids.bos_id, *unk, *self.suppress_tokens]

    def mask(self, log_probs, generated, ids: TokenIds, ops):
        """Sets -inf, in place, on the tokens the rules ban after `generated` (R, t); returns log_probs (R, V)."""
        t = generated.shape[1]
        if t < self.min_length:
            log_probs[:, ids.eos_id] = float("-inf")
        log_probs[:, self.never(ids)] = float("-inf")
        n = self.no_repeat_ngram_size
        if n and t >= n:
            rows, prefix = ops.arange(generated.shape[0]), generated[:, t - n + 1 :]  # (R,), (R, n-1)
            for start in range(t - n + 1):  # an earlier n-gram that starts with the prefix bans its last token
                repeats = (generated[:, start : start + n - 1] == prefix).all(-1)  # (R,)
                last = generated[:, start + n - 1]  # (R,)
                log_probs[rows, last] = ops.where(repeats, float("-inf"), log_probs[rows, last])
        return log_probs
