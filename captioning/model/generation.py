"""Caption generation from the image memory: greedy decoding, beam search and sampling, batched over images.

Beam search (Wu et al., 2016, "Google's Neural Machine Translation System", GNMT) ranks finished captions by
log P(Y) / |Y|^alpha, GNMT's length penalty in the simpler form of fairseq and Hugging Face: alpha = 1 gives the
mean log-probability per token. Sampling draws from the temperature-scaled distribution cut to the top k tokens
and to the nucleus of probability mass p (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration").
Every step feeds only the newest token: its self-attention reads the cached keys and values of the earlier ones,
and each layer's cross-attention projects the memory to K, V once per image. The beams (or samples) of an image
are consecutive rows that share that projection as a view (see `Attention`), so it is never copied or reordered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captioning.errors import UserError
from captioning.model.decoder import TextDecoder


@dataclass
class Generated:
    """Decoded captions of a batch.

    Attributes:
        tokens: (B, L) token ids after the start token, padded with `pad_id` after the end token.
        log_probs: (B,) summed log-probability of each caption's tokens, end token included.
        lengths: (B,) number of tokens counted in `log_probs`.
    """

    tokens: Tensor
    log_probs: Tensor
    lengths: Tensor

    @property
    def scores(self) -> Tensor:
        """Length-normalised log-probability (B,): the mean log-probability per token, end token included."""
        return self.log_probs / self.lengths.clamp(min=1)


@dataclass
class Rules:
    """Constraints applied to every step's log-probabilities (banned tokens get -inf, the rest are unchanged).

    Attributes:
        eos_id: the end token.
        min_length: the end token is banned until this many tokens have been generated.
        suppress_tokens: never generated (e.g. the padding, start and unknown tokens).
        no_repeat_ngram_size: no n-gram of this size occurs twice in a caption (0: no limit).
    """

    eos_id: int
    min_length: int = 0
    suppress_tokens: Sequence[int] = ()
    no_repeat_ngram_size: int = 0

    def apply(self, log_probs: Tensor, generated: Tensor) -> Tensor:
        """Masks `log_probs` (R, V) in place, given the tokens `generated` (R, t) so far; returns it."""
        t = generated.size(1)
        if t < self.min_length:
            log_probs[:, self.eos_id] = float("-inf")
        if len(self.suppress_tokens):
            log_probs[:, list(self.suppress_tokens)] = float("-inf")
        n = self.no_repeat_ngram_size
        if n and t >= n:
            grams = generated.unfold(1, n, 1)  # (R, t-n+1, n): every n-gram so far
            prefix = generated[:, t - n + 1 :]  # (R, n-1): an n-gram ending with the next token starts so
            rows, starts = (grams[:, :, :-1] == prefix[:, None]).all(-1).nonzero(as_tuple=True)
            log_probs[rows, grams[rows, starts, -1]] = float("-inf")
        return log_probs


class _Stepper:
    """Next-token log-probabilities of R caption rows: from the KV caches, or recomputed from the whole prefix."""

    def __init__(self, decoder: TextDecoder, memory: Tensor, use_cache: bool) -> None:
        self.decoder, self.memory = decoder, memory
        self.caches = decoder.new_caches() if use_cache else None

    def __call__(self, history: Tensor) -> Tensor:
        """The start token and the t tokens so far (R, 1+t) -> log-probabilities of the next token (R, V)."""
        if self.caches is None:  # the baseline: every position and the memory's K, V again at every step
            logits = self.decoder(history, self.memory)[:, -1]
        else:  # the newest token at position t; earlier keys and values come from the caches
            start = history.size(1) - 1
            logits = self.decoder(history[:, -1:], self.memory, self.caches, start=start)[:, -1]
        return logits.float().log_softmax(dim=-1)

    def reorder(self, rows: Tensor) -> None:
        """Row i continues the caption of row rows[i] (R,): beams of one image, so an image keeps its rows."""
        if self.caches is not None:
            for self_cache, _cross_cache in self.caches:
                self_cache.select(rows)  # the cross-attention K, V (B, nh, M, hs) belong to images, not rows


def _limit(decoder: TextDecoder, max_length: int | None) -> int:
    return min(max_length or decoder.max_length, decoder.max_length)


def _decode_rows(
    decoder: TextDecoder,
    memory: Tensor,
    rows_per_image: int,
    choose: Callable[[Tensor], Tensor],
    bos_id: int,
    pad_id: int,
    max_length: int | None,
    rules: Rules,
    use_cache: bool,
) -> Generated:
    """One caption per row, each step's token chosen by `choose` (greedy or sampled), until all rows ended."""
    R = memory.size(0) * rows_per_image
    max_length = _limit(decoder, max_length)
    step = _Stepper(decoder, memory, use_cache)
    history = torch.full((R, 1), bos_id, dtype=torch.long, device=memory.device)  # (R, 1+t)
    finished = torch.zeros(R, dtype=torch.bool, device=memory.device)
    log_probs = torch.zeros(R, device=memory.device)
    lengths = torch.zeros(R, dtype=torch.long, device=memory.device)
    eos_id = rules.eos_id
    for _ in range(max_length):
        step_log_probs = rules.apply(step(history), history[:, 1:])  # (R, V)
        token = choose(step_log_probs)  # (R,)
        log_probs += torch.where(finished, 0.0, step_log_probs.gather(1, token[:, None]).squeeze(1))
        lengths += (~finished).long()
        token = token.masked_fill(finished, pad_id)
        history = torch.cat([history, token[:, None]], dim=1)
        finished |= token == eos_id
        if finished.all():
            break
    return Generated(history[:, 1:], log_probs, lengths)


@torch.no_grad()
def greedy_decode(
    decoder: TextDecoder,
    memory: Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int | None = None,
    *,
    min_length: int = 0,
    suppress_tokens: Sequence[int] = (),
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
) -> Generated:
    """Picks the most probable next token until every caption has ended or reached `max_length` tokens.

    Args:
        decoder: the text decoder.
        memory: (B, M, D) image memory.
        bos_id, eos_id, pad_id: special token ids.
        max_length: at most this many tokens after the start token, end token included (default: the decoder's).
        min_length, suppress_tokens, no_repeat_ngram_size: see `Rules`.
        use_cache: False recomputes every position at every step (a baseline for tests and benchmarks).

    Returns:
        The captions' tokens (B, L) and log-probabilities (B,).
    """
    rules = Rules(eos_id, min_length, suppress_tokens, no_repeat_ngram_size)
    choose = lambda log_probs: log_probs.argmax(dim=-1)  # noqa: E731
    return _decode_rows(decoder, memory, 1, choose, bos_id, pad_id, max_length, rules, use_cache)


@torch.no_grad()
def sample_decode(
    decoder: TextDecoder,
    memory: Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int | None = None,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_length: int = 0,
    suppress_tokens: Sequence[int] = (),
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
) -> Generated:
    """Draws captions token by token from the model, with temperature, top-k and nucleus (top-p) truncation.

    The log-probabilities returned are the model's own (temperature 1, before truncation), so that sampled and
    searched captions are scored alike.

    Args:
        decoder, memory, bos_id, eos_id, pad_id, max_length: as in `greedy_decode`.
        num_samples: captions per image, in consecutive rows sharing the image's memory.
        temperature: divides the log-probabilities before sampling (< 1 sharper, > 1 flatter).
        top_k: sample among the k most probable tokens only (0: all).
        top_p: sample among the most probable tokens whose mass reaches p (1.0: all).
        generator: random number generator, for reproducible samples (default: torch's global one).
        min_length, suppress_tokens, no_repeat_ngram_size, use_cache: as in `greedy_decode`.

    Returns:
        (B * num_samples) captions, the samples of image b in rows b * num_samples onwards.
    """
    if temperature <= 0:
        raise UserError(f"temperature must be positive, got {temperature}; use greedy decoding for temperature 0")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0, got {top_k}")

    def choose(log_probs: Tensor) -> Tensor:
        logits = log_probs / temperature  # (R, V)
        if 0 < top_k < logits.size(-1):
            kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (R, V)
            probs = sorted_logits.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= top_p  # the tokens ranked above already hold mass p
            logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, float("-inf")))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)  # (R,)

    rules = Rules(eos_id, min_length, suppress_tokens, no_repeat_ngram_size)
    return _decode_rows(decoder, memory, num_samples, choose, bos_id, pad_id, max_length, rules, use_cache)


@torch.no_grad()
def beam_search(
    decoder: TextDecoder,
    memory: Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int | None = None,
    *,
    beam_size: int = 3,
    length_penalty: float = 1.0,
    include_greedy: bool = True,
    min_length: int = 0,
    suppress_tokens: Sequence[int] = (),
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
) -> Generated:
    """Beam search over a batch of images whose beams end at different steps.

    Each image keeps K = `beam_size` live beams, ranked by summed log-probability. At each step the 2K best
    extensions are taken; an end token among the first K of them finishes that caption, and the first K other
    extensions become the live beams (fairseq's rule, so that beam size 1 is greedy decoding). An image is done
    once K of its captions have finished and none of its live beams, at its mean log-probability so far, would
    rank above the best of them (Hugging Face's `early_stopping=False`); at `max_length` the live beams finish as
    they are. The caption returned is the finished one with the best log P(Y) / |Y|^length_penalty, where |Y|
    counts the end token.

    Beam search prunes by the summed log-probability of equally long prefixes, so a long caption that is likely
    per token can be pruned before it becomes the best by mean log-probability: on the shapes data, where the
    first words choose among five templates, textbook beam search ends below greedy decoding for about one image
    in ten. With `include_greedy` each image also decodes its greedy caption in one more row sharing its memory
    and caches, and that caption competes with the finished beams: the result is never worse than greedy
    decoding under this ranking, for 1/K more decoder work.

    Args:
        decoder, memory, bos_id, eos_id, pad_id, max_length: as in `greedy_decode`.
        beam_size: K, live beams per image.
        length_penalty: alpha; 1.0 ranks by mean log-probability per token, 0.0 by total log-probability.
        include_greedy: also decode the greedy caption of each image as a candidate (only when K > 1).
        min_length, suppress_tokens, no_repeat_ngram_size, use_cache: as in `greedy_decode`.

    Returns:
        The best caption of each image (B, L); `log_probs` is its summed log-probability.
    """
    if beam_size < 1:
        raise UserError(f"beam_size must be >= 1, got {beam_size}")
    B, K, device = memory.size(0), beam_size, memory.device
    G = K + 1 if include_greedy and K > 1 else K  # rows per image: K beams, then the greedy row if any
    R = B * G  # the rows of image b are b*G .. b*G+G-1, so that they share its cross-attention K, V
    max_length = _limit(decoder, max_length)
    rules = Rules(eos_id, min_length, suppress_tokens, no_repeat_ngram_size)
    step = _Stepper(decoder, memory, use_cache)
    history = torch.full((R, 1), bos_id, dtype=torch.long, device=device)  # (R, 1+t)
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    image_rows = torch.arange(B, device=device)[:, None] * G  # (B, 1) first row of each image
    ranks = torch.arange(2 * K, device=device)[None]  # (1, 2K)
    num_finished = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # the beams of the image are done
    greedy_rows = image_rows + K  # (B, 1)
    greedy_sum = torch.zeros(B, 1, device=device)
    greedy_done = torch.full((B, 1), G == K, device=device)  # (B, 1), all True when there is no greedy row

    best = torch.full((B,), float("-inf"), device=device)  # best finished caption's ranking score
    best_tokens = torch.full((B, max_length), pad_id, dtype=torch.long, device=device)
    best_log_probs = torch.zeros(B, device=device)
    best_lengths = torch.ones(B, dtype=torch.long, device=device)

    def finish(candidates: Tensor, scores: Tensor, rows: Tensor, last: Tensor, length: int) -> None:
        """Keeps, per image, the best of `candidates` (B, C) if it beats the best so far (in place)."""
        ranking = torch.where(candidates, scores / length**length_penalty, float("-inf"))  # (B, C)
        value, position = ranking.max(dim=1)  # (B,)
        better = value > best
        if better.any():
            source = rows.gather(1, position[:, None]).squeeze(1)  # (B,) the row each best candidate extends
            caption = torch.cat([history[source, 1:], last.gather(1, position[:, None])], dim=1)  # (B, length)
            best_tokens[better, :length] = caption[better]
            best_tokens[better, length:] = pad_id
            best_log_probs[better] = scores.gather(1, position[:, None]).squeeze(1)[better]
            best_lengths[better] = length
            best[better] = value[better]

    for t in range(max_length):
        log_probs = rules.apply(step(history), history[:, 1:]).view(B, G, -1)  # (R, V) -> (B, G, V)
        V, last_step = log_probs.size(-1), t == max_length - 1
        totals = (beam_scores[..., None] + log_probs[:, :K]).view(B, K * V)  # (B, K*V): each beam x each token
        top_scores, top_index = totals.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        top_rows = image_rows + top_index // V  # (B, 2K) the row each extension continues
        top_tokens = top_index % V  # (B, 2K)
        is_eos = top_tokens == eos_id
        ended = is_eos & (ranks[:, : is_eos.size(1)] < K) & ~done[:, None] & top_scores.isfinite()
        finish(ended, top_scores, top_rows, top_tokens, t + 1)
        num_finished += ended.sum(dim=1)
        keep = is_eos.to(torch.int8).sort(dim=1, stable=True).indices[:, :K]  # (B, K) the first K non-end
        beam_scores = top_scores.gather(1, keep)  # (B, K)
        rows, tokens = top_rows.gather(1, keep), top_tokens.gather(1, keep)  # (B, K)
        if last_step:  # out of room: the live beams finish without an end token
            finish(~done[:, None] & beam_scores.isfinite(), beam_scores, rows, tokens, t + 1)
        done |= (num_finished >= K) & (best >= beam_scores.max(dim=1).values / (t + 1) ** length_penalty)

        if G > K:  # the greedy row: its most probable token, until its end token
            greedy_log_probs = log_probs[:, K]  # (B, V)
            greedy_token = greedy_log_probs.argmax(dim=-1, keepdim=True)  # (B, 1)
            greedy_sum += greedy_log_probs.gather(1, greedy_token).masked_fill(greedy_done, 0.0)
            ends = ~greedy_done & ((greedy_token == eos_id) | last_step)
            finish(ends, greedy_sum, greedy_rows, greedy_token, t + 1)
            greedy_token = greedy_token.masked_fill(greedy_done, pad_id)
            greedy_done |= ends
        if last_step or bool((done & greedy_done.squeeze(1)).all()):
            break
        rows = torch.where(done[:, None], image_rows + torch.arange(K, device=device), rows)  # (B, K)
        tokens = tokens.masked_fill(done[:, None], pad_id)  # (B, K): a done image's beams idle on padding
        if G > K:
            rows, tokens = torch.cat([rows, greedy_rows], dim=1), torch.cat([tokens, greedy_token], dim=1)  # (B, G)
        rows, tokens = rows.view(R), tokens.view(R, 1)  # (R,), (R, 1)
        history = torch.cat([history[rows], tokens], dim=1)  # (R, 2+t)
        step.reorder(rows)

    width = int(best_lengths.max())
    return Generated(best_tokens[:, :width], best_log_probs, best_lengths)
