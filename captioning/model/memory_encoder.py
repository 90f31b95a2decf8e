"""Self-attention over the image memory before the decoder reads it: each memory token learns where the others are.

A caption word that relates two objects ("A above B") must know where both are. Read through cross-attention alone,
that takes two hops in one decoding step: find A, then find the other object and compare. A few Transformer encoder
blocks over the memory tokens (Vaswani et al., 2017), with the memory positions already added, let each token gather
its neighbours' places first, so that one hop to A brings back "something is below me". Captioners built on region
features do the same with a relation-aware encoder (Herdade et al., 2019, "Image Captioning: Transforming Objects
into Words"; Cornia et al., 2020, M2 Transformer). The memory has tens of tokens, so the blocks cost little.
"""

from __future__ import annotations

from torch import Tensor, nn

from captioning.model.attention import Attention
from captioning.model.decoder import MLP
from captioning.model.dropout import Dropout


class MemoryBlock(nn.Module):
    """Pre-norm self-attention over all memory tokens (no mask: each sees every other), then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop = Dropout(dropout)

    def forward(self, memory: Tensor) -> Tensor:
        memory = memory + self.drop(self.self_attn(self.norm1(memory)))  # memory token -> every memory token
        return memory + self.mlp(self.norm2(memory))  # (B, M, D)
