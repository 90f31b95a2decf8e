"""Multi-head attention for the text decoder: causal self-attention over the caption, cross-attention to the image.

One `Attention` class serves both (Vaswani et al., 2017, "Attention Is All You Need"): with `context=None` the
queries, keys and values all come from the text; with `context=memory` the queries (Q) come from the text and the
keys and values (K, V) from the image memory. Runs on `scaled_dot_product_attention` (flash / memory-efficient
kernels on GPU); attention weights are computed explicitly only when a caller asks for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioning.errors import UserError
from captioning.model.dropout import draws_integer_masks, dropout


@dataclass
class KVCache:
    """Keys and values kept between decoding steps, each (B, nh, S, hs).

    For self-attention S grows by one position per step; for cross-attention the image memory is projected once
    per image and reused at every step (and by every beam of that image).
    """

    k: Tensor | None = None
    v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Adds this step's keys and values and returns all keys and values so far."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def select(self, index: Tensor) -> None:
        """Keeps the rows in `index` (B',), e.g. the surviving beams after a beam-search step."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value projections (as timm's attention pool).

    Cross-attention lets several captions (or beams) of one image share that image's K and V: when the text batch
    is G times the memory batch, each image's G query sequences are stacked along the query axis, so the memory is
    projected once per image and never copied.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Projects the text (self-attention) or the image memory (cross-attention) to keys and values.

        Args:
            source: (B, S, D).

        Returns:
            Keys and values, each (B, nh, S, hs).
        """
        B, S, _ = source.shape
        kv = self.kv(source).view(B, S, 2, self.num_heads, self.head_dim)  # (B, S, 2, nh, hs)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, S, hs)
        return k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        is_causal: bool = False,
        attend: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        locate: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attends from the text `x` to itself (`context=None`) or to the image memory (`context`).

        Args:
            x: text states (B*G, T, D), G captions or beams per image (G = 1 for self-attention).
            context: image memory (B, M, D), or None for self-attention.
            is_causal: each position sees only itself and earlier positions (self-attention).
            attend: (B, 1, T, T) bool, True where a position may look, in place of `is_causal`: rows that hold
                several captions back to back (see `packing`), each causal within its own caption.
            cache: keys/values from earlier steps (self-attention) or of the projected memory (cross-attention).
            need_weights: also return the attention weights (B*G, nh, T, S), computed explicitly.
            locate: (S, P) values of the attended positions (e.g. their grid coordinates): also return their
                attention-weighted sum per head, (B*G, nh, T, P), where each head looked. The weights are then
                computed explicitly, once for both sums (not with need_weights, whose weights give it).

        Returns:
            The attended states (B*G, T, D), and the weights when asked for.
        """
        BG, T, D = x.shape
        q = self.q(x).view(BG, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B*G, nh, T, hs)

        if context is None:  # self-attention: K, V from the text; the cache holds earlier positions
            k, v = self.project_kv(x)  # (B*G, nh, T, hs)
            past = 0 if cache is None or cache.k is None else cache.k.size(2)
            if cache is not None:
                k, v = cache.append(k, v)  # (B*G, nh, past + T, hs)
            if is_causal and past and T > 1:
                raise ValueError("causal attention over a cache takes one new position at a time")
            # One new position over a cache sees all of it. Decided by `past`, a Python int, and not by `T > 1`: under
            # torch.compile with varying caption widths T is symbolic, and a symbolic bool would break the graph.
            is_causal = is_causal and not past
        else:  # cross-attention: K, V from the image memory, projected once per image
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                k, v = self.project_kv(context)  # (B, nh, M, hs)
                if cache is not None:
                    cache.k, cache.v = k, v
            is_causal = False

        B = k.size(0)
        G = BG // B  # captions (or beams) per image sharing one memory
        if G * B != BG:
            raise ValueError(f"text batch {BG} is not a multiple of the memory batch {B}")
        # Stack the G query sequences of each image: (B*G, nh, T, hs) -> (B, nh, G*T, hs).
        q = q.view(B, G, self.num_heads, T, self.head_dim).transpose(1, 2).reshape(B, self.num_heads, G * T, -1)

        p = self.dropout if self.training else 0.0
        weights = found = None
        if need_weights:
            y, weights = _attention_with_weights(q, k, v, is_causal, attend)
        elif locate is not None:  # one softmax for both sums; the places are read without dropout
            weights = _attention_weights(q, k, is_causal, attend)  # (B, nh, G*T, S)
            y = dropout(weights, p) @ v  # (B, nh, G*T, hs)
            found = weights @ locate.to(q.dtype)  # (B, nh, G*T, P)
        elif draws_integer_masks(q, p):  # written out as torch's CPU attention would, with the faster masks
            y = dropout(_attention_weights(q, k, is_causal, attend), p) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p, is_causal=is_causal)

        # Unstack: (B, nh, G*T, hs) -> (B*G, T, D).
        y = y.view(B, self.num_heads, G, T, self.head_dim).permute(0, 2, 3, 1, 4).reshape(BG, T, D)
        y = self.proj(y)
        if need_weights:
            return y, _per_caption(weights, G, T)  # weights: (B*G, nh, T, S)
        if found is not None:
            return y, _per_caption(found, G, T)  # (B*G, nh, T, P)
        return y


def _per_caption(stacked: Tensor, G: int, T: int) -> Tensor:
    """(B, nh, G*T, X), the G query sequences of each image stacked, -> (B*G, nh, T, X)."""
    B, nh, _, X = stacked.shape  # X read from the shape, not -1: exported graphs keep it a constant
    return stacked.view(B, nh, G, T, X).transpose(1, 2).reshape(B * G, nh, T, X)


def _attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, is_causal: bool, attend: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """softmax(Q K^T / sqrt(hs)) V, written out so that the weights can be returned (for visualisation)."""
    weights = _attention_weights(q, k, is_causal, attend)
    return weights @ v, weights  # (B, nh, Tq, hs), (B, nh, Tq, S)


def _attention_weights(q: Tensor, k: Tensor, is_causal: bool, attend: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(hs)) (B, nh, Tq, S), masked causally or by `attend`."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, S)
    if is_causal:
        Tq, S = scores.shape[-2:]
        attend = torch.ones(Tq, S, dtype=torch.bool, device=q.device).tril()
    if attend is not None:
        scores = scores.masked_fill(~attend, float("-inf"))
    return scores.softmax(dim=-1)
