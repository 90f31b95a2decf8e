"""Greedy decoding, beam search and sampling, written once over a stepper, for NumPy arrays and torch tensors alike.

A stepper (fairseq's model wrapper) gives the next-token log-probabilities of R caption rows and reorders rows:
`TorchStepper` from a KV cache or by recomputing the prefix, `OnnxStepper` from onnxruntime. Beam search (Wu et al.,
2016, GNMT) ranks finished captions by log P(Y) / |Y|^alpha, |Y| counting the end token. Sampling draws from the
temperature-scaled distribution cut to the top k tokens and to the nucleus of mass p (Holtzman et al., 2020), by
inverse CDF at uniforms that a seeded NumPy generator gives both backends: torch and onnxruntime draw alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from captioning.decoding.spec import DecodeSpec, TokenIds
from captioning.errors import UserError

OnStep = Callable[[Any], None]  # sees, after each step, the tokens so far (B, t) of each image's first or best row
NEG_INF = float("-inf")


class Stepper(Protocol):
    """`stepper(history)`: the start token and the t tokens so far (R, 1+t) -> next-token log-probabilities (R, V),
    float32; `reorder(rows)`: row i continues row rows[i] (R,). The rows of an image are consecutive and stay its."""

    ops: Any  # the array namespace: `NumpyOps` or `TorchOps`
    num_images: int  # B
    max_length: int  # the model's limit: tokens after the start token, end token included

    def __call__(self, history: Any) -> Any: ...
    def reorder(self, rows: Any) -> None: ...


@dataclass
class Generated:
    """Captions: tokens (N, L) after the start token, padded after the end token; log_probs (N,), summed over the
    tokens counted in lengths (N,), end token included."""

    tokens: Any
    log_probs: Any
    lengths: Any

    @property
    def scores(self) -> Any:
        """(N,) the mean log-probability per token, end token included."""
        return self.log_probs / self.lengths.clip(min=1)


def generate(stepper: Stepper, spec: DecodeSpec, ids: TokenIds, rng: np.random.Generator | None = None,
             on_step: OnStep | None = None) -> Generated:  # fmt: skip
    """Decodes the stepper's images as `spec` says: one caption per image, or `spec.num_samples` in sample mode.
    `ids` are the special tokens (a `CaptionTokenizer` will do); `rng` gives sampling's uniforms (default: seeded with
    `spec.seed`: pass one generator to successive batches to go on with its stream); `on_step` streams."""
    max_length = min(spec.max_length or stepper.max_length, stepper.max_length)
    if spec.min_length > max_length - 1:  # the end token would never be allowed: every caption cut off mid-sentence
        raise UserError(
            f"decoding field 'min_length' is {spec.min_length}, but at most {max_length - 1} words fit before the end "
            f"token (max_length {max_length}, the end token included)"
        )
    if spec.mode == "beam" and spec.beam_size > 1:
        return beam_search(stepper, spec, ids, max_length, on_step)
    if spec.mode == "greedy" or spec.mode == "beam":
        return _decode_rows(stepper, spec, ids, lambda log_probs, t: log_probs.argmax(-1), 1, max_length, on_step)
    rng = rng or (np.random.default_rng(spec.seed) if spec.seed is not None else None)
    uniforms = stepper.ops.uniform((max_length, stepper.num_images * spec.num_samples), rng)  # one transfer
    choose = lambda log_probs, t: _sample(stepper.ops, log_probs, uniforms[t], spec)  # noqa: E731
    return _decode_rows(stepper, spec, ids, choose, spec.num_samples, max_length, on_step)


def _decode_rows(stepper, spec, ids, choose, rows_per_image: int, max_length: int, on_step) -> Generated:
    """One caption per row, each step's token chosen by `choose` (greedy or sampled), until all rows ended."""
    ops, R = stepper.ops, stepper.num_images * rows_per_image
    history = ops.full((R, 1), ids.bos_id, "int")  # (R, 1+t)
    finished = ops.full((R,), False, "bool")
    log_probs, lengths = ops.full((R,), 0.0, "float"), ops.full((R,), 0, "int")
    for t in range(max_length):
        step = spec.mask(stepper(history), history[:, 1:], ids, ops)  # (R, V)
        token = choose(step, t)  # (R,)
        log_probs = log_probs + ops.where(finished, 0.0, ops.take(step, token[:, None], 1)[:, 0])
        lengths = lengths + ops.where(finished, 0, 1)
        history = ops.cat([history, ops.where(finished, ids.pad_id, token)[:, None]], 1)
        finished = finished | (history[:, -1] == ids.eos_id)
        if on_step is not None:
            on_step(history[::rows_per_image, 1:])
        if (t + 1) % ops.sync_every == 0 and bool(finished.all()):  # rows that ended meanwhile idle on padding
            break
    return Generated(history[:, 1:], log_probs, lengths)


def _sample(ops, log_probs, uniforms, spec: DecodeSpec):
    """One token per row (R,) from log_probs (R, V) at uniforms (R,), in float64 so that the backends' sums agree."""
    logits = ops.float64(log_probs) / spec.temperature  # (R, V)
    V = logits.shape[-1]
    if 0 < spec.top_k < V or spec.top_p < 1:
        ranked, _ = ops.topk(logits, V)  # (R, V), most probable first
        if 0 < spec.top_k < V:
            logits = ops.where(logits < ranked[:, spec.top_k - 1 : spec.top_k], NEG_INF, logits)
            ranked = ops.where(ops.arange(V)[None] < spec.top_k, ranked, NEG_INF)
        if spec.top_p < 1:
            probs = ops.exp(ranked - ranked[:, :1])
            probs = probs / probs.sum(-1)[:, None]  # (R, V), ranked
            kept = (probs.cumsum(-1) - probs < spec.top_p).sum(-1)  # the tokens ranked above the last kept hold < p
            logits = ops.where(logits < ops.take(ranked, kept[:, None] - 1, 1), NEG_INF, logits)
    probs = ops.exp(logits - ops.take(logits, logits.argmax(-1)[:, None], 1))  # (R, V), unnormalised
    cdf = probs.cumsum(-1)
    token = (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(-1)  # the first token whose cdf passes u * total
    return ops.where(token >= V, probs.argmax(-1), token)  # u * total rounded up to the total: the likeliest


class _Best:
    """Per image, the finished caption that ranks best so far by log P / length^alpha."""

    def __init__(self, ops, B: int, max_length: int, pad_id: int, alpha: float) -> None:
        self.ops, self.pad_id, self.alpha = ops, pad_id, alpha
        self.rank, self.log_probs = ops.full((B,), NEG_INF, "float"), ops.full((B,), 0.0, "float")
        self.tokens, self.lengths = ops.full((B, max_length), pad_id, "int"), ops.full((B,), 1, "int")

    def offer(self, candidates, log_probs, history, rows, last, length: int) -> None:
        """Keeps each image's best of `candidates` (B, C) if it beats the best so far: candidate c continues row
        rows[:, c] of `history` with the token last[:, c], to `length` tokens worth log_probs[:, c] in all."""
        ops = self.ops
        ranking = ops.where(candidates, log_probs / length**self.alpha, NEG_INF)  # (B, C)
        position = ranking.argmax(-1)[:, None]  # (B, 1)
        value = ops.take(ranking, position, 1)[:, 0]  # (B,)
        better = value > self.rank  # (B,)
        if not bool(better.any()):
            return
        source = ops.take(rows, position, 1)[:, 0]  # (B,) the row each best candidate extends
        padding = ops.full((len(source), self.tokens.shape[1] - length), self.pad_id, "int")
        caption = ops.cat([history[source, 1:], ops.take(last, position, 1), padding], 1)  # (B, max_length)
        self.tokens = ops.where(better[:, None], caption, self.tokens)
        self.log_probs = ops.where(better, ops.take(log_probs, position, 1)[:, 0], self.log_probs)
        self.lengths, self.rank = ops.where(better, length, self.lengths), ops.where(better, value, self.rank)


def beam_search(stepper: Stepper, spec: DecodeSpec, ids: TokenIds, max_length: int, on_step=None) -> Generated:
    """Beam search over a batch of images whose beams end at different steps; the best caption of each image.

    Each image keeps K = `spec.beam_size` live beams ranked by summed log-probability. Of each step's 2K best
    extensions, an end token among the first K finishes that caption and the first K others live on (fairseq's
    rule: beam size 1 is greedy). An image is done once K captions have finished and no live beam, at its mean
    log-probability so far, would rank above the best (Hugging Face's `early_stopping=False`); at `max_length` the
    live beams finish as they are. Pruning by summed log-probability can lose a long caption that is likely per
    token (textbook beam search ends below greedy for one shapes image in ten), so with `spec.include_greedy` each
    image also decodes its greedy caption in one more row, a candidate too: never below greedy, for 1/K more work.
    """
    ops, B, K, alpha = stepper.ops, stepper.num_images, spec.beam_size, spec.length_penalty
    G = K + 1 if spec.include_greedy and K > 1 else K  # rows per image: K beams, then the greedy row if any
    R = B * G
    history = ops.full((R, 1), ids.bos_id, "int")  # (R, 1+t)
    beam_sums = ops.where(ops.arange(K)[None] == 0, 0.0, ops.full((B, K), NEG_INF, "float"))  # expand one beam
    image_rows, first_k = ops.arange(B)[:, None] * G, ops.arange(2 * K)[None] < K  # (B, 1), (1, 2K)
    num_finished, done = ops.full((B,), 0, "int"), ops.full((B,), False, "bool")  # done: the image's beams
    greedy_rows, greedy_sum = image_rows + K, ops.full((B, 1), 0.0, "float")
    greedy_done = ops.full((B, 1), G == K, "bool")  # all True when there is no greedy row
    best = _Best(ops, B, max_length, ids.pad_id, alpha)
    for t in range(max_length):
        log_probs = spec.mask(stepper(history), history[:, 1:], ids, ops).reshape(B, G, -1)  # (R, V) -> (B, G, V)
        V, last_step = log_probs.shape[-1], t == max_length - 1
        totals = (beam_sums[..., None] + log_probs[:, :K]).reshape(B, K * V)  # (B, K*V): each beam x each token
        top_sums, top_index = ops.topk(totals, min(2 * K, K * V))  # (B, 2K)
        top_rows, top_tokens = image_rows + top_index // V, top_index % V  # (B, 2K) the row each continues
        is_eos = top_tokens == ids.eos_id
        ended = is_eos & first_k[:, : is_eos.shape[1]] & ~done[:, None] & (top_sums > NEG_INF)
        best.offer(ended, top_sums, history, top_rows, top_tokens, t + 1)
        num_finished = num_finished + ended.sum(-1)
        _, keep = ops.topk(-(is_eos * 2 * K) - ops.arange(2 * K)[None], K)  # (B, K) the first K that do not end
        beam_sums, rows, tokens = (ops.take(x, keep, 1) for x in (top_sums, top_rows, top_tokens))  # (B, K)
        if last_step:  # out of room: the live beams finish without an end token
            best.offer(~done[:, None] & (beam_sums > NEG_INF), beam_sums, history, rows, tokens, t + 1)
        best_live = ops.take(beam_sums, beam_sums.argmax(-1)[:, None], 1)[:, 0]  # (B,)
        done = done | ((num_finished >= K) & (best.rank >= best_live / (t + 1) ** alpha))
        if G > K:  # the greedy row: its most probable token, until its end token
            greedy_token = log_probs[:, K].argmax(-1)[:, None]  # (B, 1)
            greedy_sum = greedy_sum + ops.where(greedy_done, 0.0, ops.take(log_probs[:, K], greedy_token, 1))
            ends = ~greedy_done & ((greedy_token == ids.eos_id) | last_step)
            best.offer(ends, greedy_sum, history, greedy_rows, greedy_token, t + 1)
            greedy_token, greedy_done = ops.where(greedy_done, ids.pad_id, greedy_token), greedy_done | ends
        if last_step or bool((done & greedy_done[:, 0]).all()):
            break
        rows = ops.where(done[:, None], image_rows + ops.arange(K)[None], rows)  # (B, K): a done image's beams
        tokens = ops.where(done[:, None], ids.pad_id, tokens)  # idle on padding
        if G > K:
            rows, tokens = ops.cat([rows, greedy_rows], 1), ops.cat([tokens, greedy_token], 1)  # (B, G)
        history = ops.cat([history[rows.reshape(R)], tokens.reshape(R, 1)], 1)  # (R, 2+t)
        stepper.reorder(rows.reshape(R))
        if on_step is not None:
            on_step(history[::G, 1:])  # each image's best live beam
    return Generated(best.tokens[:, : int(best.lengths.max())], best.log_probs, best.lengths)


def caption_rows(generated: Generated, ids: TokenIds) -> list[tuple[list[int], float, bool]]:
    """Each caption's word ids (cut at the end token, without padding), its score, and whether it ended."""
    rows = []
    for row, score in zip(generated.tokens.tolist(), generated.scores.tolist(), strict=True):
        words = row[: row.index(ids.eos_id)] if ids.eos_id in row else row
        rows.append(([i for i in words if i != ids.pad_id], score, ids.eos_id in row))
    return rows
