"""Teacher-forced scoring: the log-probability that the decoder gives a known caption of an image, never decoding.

Re-ranking, filtering and relation probes (a true caption against its foil) all read this number. One pass over
the whole caption gives every position's next-token distribution; the caption's own tokens are read off it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captioning.model.decoder import TextDecoder


@dataclass
class TokenScores:
    """Scores of N captions.

    Attributes:
        token_log_probs: (N, T) log P of each caption's words and end token, 0 after the end.
        log_probs: (N,) their sum: log P(caption + end token | image).
        lengths: (N,) tokens counted, end token included.
    """

    token_log_probs: Tensor
    log_probs: Tensor
    lengths: Tensor


@torch.no_grad()
def score_tokens(decoder: TextDecoder, memory: Tensor, tokens: Tensor, owners: Tensor, pad_id: int) -> TokenScores:
    """Teacher-forced log-probabilities of captions.

    Args:
        decoder: the text decoder.
        memory: (B, M, D) image memory.
        tokens: (N, T+1) captions as `CaptionTokenizer.encode` writes them: [BOS] words [EOS], then padding.
        owners: (N,) the image (row of `memory`) of each caption; any number of captions per image.
        pad_id: the padding token.

    Returns:
        Per-token and summed log-probabilities, as greedy decoding adds them up (the model's own distribution,
        with no token suppressed).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (N, T) each
    logits = decoder(inputs, memory.index_select(0, owners))  # (N, T, V): each caption reads its image's memory
    log_probs = logits.float().log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # (N, T)
    real = targets != pad_id
    token_log_probs = log_probs.masked_fill(~real, 0.0)
    return TokenScores(token_log_probs, token_log_probs.sum(dim=1), real.sum(dim=1))
