"""Caption generation from the image memory: greedy decoding with a self-attention KV cache.

Each layer's cross-attention projects the memory to K, V once per image (kept in its cache); each step feeds
only the newest token, whose self-attention reads the cached keys and values of the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
        """Length-normalised log-probability (B,)."""
        return self.log_probs / self.lengths.clamp(min=1)


@torch.no_grad()
def greedy_decode(
    decoder: TextDecoder, memory: Tensor, bos_id: int, eos_id: int, pad_id: int, max_length: int | None = None
) -> Generated:
    """Picks the most probable next token until every caption has ended or reached `max_length` tokens.

    Args:
        decoder: the text decoder.
        memory: (B, M, D) image memory.
        bos_id, eos_id, pad_id: special token ids.
        max_length: at most this many tokens after the start token (default: the decoder's limit).

    Returns:
        The captions' tokens and log-probabilities.
    """
    B = memory.size(0)
    max_length = min(max_length or decoder.max_length, decoder.max_length)
    caches = decoder.new_caches()
    last = torch.full((B, 1), bos_id, dtype=torch.long, device=memory.device)
    finished = torch.zeros(B, dtype=torch.bool, device=memory.device)
    log_probs = torch.zeros(B, device=memory.device)
    lengths = torch.zeros(B, dtype=torch.long, device=memory.device)
    steps = []
    for position in range(max_length):
        logits = decoder(last, memory, caches, start=position)[:, -1].float()  # (B, V)
        step_log_probs = logits.log_softmax(dim=-1)
        token = step_log_probs.argmax(dim=-1)  # (B,)
        log_probs += torch.where(finished, 0.0, step_log_probs.gather(1, token[:, None]).squeeze(1))
        lengths += (~finished).long()
        token = token.masked_fill(finished, pad_id)
        steps.append(token)
        finished |= token == eos_id
        if finished.all():
            break
        last = token[:, None]
    return Generated(torch.stack(steps, dim=1), log_probs, lengths)
