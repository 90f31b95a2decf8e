"""The Transformer text decoder: pre-norm blocks of causal self-attention, cross-attention to the image, and an MLP.

A GPT-style decoder (Radford et al., 2019) with the cross-attention of the original Transformer decoder
(Vaswani et al., 2017); learned positions and an LM head tied to the token embedding (Press & Wolf, 2017). Its blocks
can also pass on where they looked in the image (`focus`), so that a word can compare two places.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioning.model.attention import Attention, KVCache
from captioning.model.dropout import Dropout
from captioning.model.focus import FocusOffsets
from captioning.text.packing import PackedRows


class MLP(nn.Module):
    """Position-wise feed-forward network."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class DecoderBlock(nn.Module):
    """Causal self-attention over the caption, cross-attention to the image memory, then an MLP; all pre-norm.

    With `focus`, the block also adds where its heads looked relative to the previous block's focus, and with
    `between_heads` relative to each other (see `focus`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        focus: bool = False,
        between_heads: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.focus = FocusOffsets(dim, num_heads, between_heads) if focus else None
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        caches: tuple[KVCache, KVCache] | None = None,
        grid: Tensor | None = None,
        previous: Tensor | None = None,
        attend: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The block's output (B*G, T, D) and its focus (B*G, T, 2), None without `focus`.

        `grid` is the memory's `grid_coordinates` (M, 3) and `previous` the focus of the block before (None first).
        `attend` (B, 1, T, T) replaces the causal mask for packed rows (see `packing`).
        """
        self_cache, cross_cache = caches if caches is not None else (None, None)
        h = self.self_attn(self.norm1(x), is_causal=attend is None, attend=attend, cache=self_cache)
        x = x + self.drop(h)  # text -> earlier text (of the same caption)
        focus = None
        if self.focus is None:
            x = x + self.drop(self.cross_attn(self.norm2(x), context=memory, cache=cross_cache))  # text -> image
        else:
            h, found = self.cross_attn(self.norm2(x), context=memory, cache=cross_cache, locate=grid)
            offsets, focus = self.focus(found, previous)
            x = x + self.drop(h) + offsets
        x = x + self.mlp(self.norm3(x))
        return x, focus

    def forward_with_attention(
        self, x: Tensor, memory: Tensor, grid: Tensor | None = None, previous: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """As forward, also returning the self-attention (B, nh, T, T) and cross-attention (B, nh, T, M) weights."""
        h, self_weights = self.self_attn(self.norm1(x), is_causal=True, need_weights=True)
        x = x + h
        h, cross_weights = self.cross_attn(self.norm2(x), context=memory, need_weights=True)
        x = x + h
        focus = None
        if self.focus is not None:
            offsets, focus = self.focus(cross_weights @ grid.to(cross_weights.dtype), previous)
            x = x + offsets
        x = x + self.mlp(self.norm3(x))
        return x, self_weights, cross_weights, focus


class TextDecoder(nn.Module):
    """Token and position embeddings, `depth` decoder blocks, a final norm and the tied LM head."""

    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_length: int = 32,
        dropout: float = 0.1,
        memory_grid: Tensor | None = None,
        head_offsets: bool = False,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_length, dim)
        self.drop = Dropout(dropout)
        focus = memory_grid is not None
        block = dict(mlp_ratio=mlp_ratio, dropout=dropout, focus=focus, between_heads=focus and head_offsets)
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, **block) for _ in range(depth))
        # the memory tokens' `grid_coordinates` (M, 3), for blocks that report where they looked; None: they do not
        self.register_buffer("memory_grid", memory_grid, persistent=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.token_embed.weight  # tied: one matrix reads and writes words
        self.apply(_init_weights)
        self._compiled_stack = None  # a compiled `run_blocks`, not a module: the state_dict keeps its names

    def compile_blocks(self, **options) -> None:
        """torch.compile of the stack of blocks for whole-caption passes (training, SCST's teacher-forced pass,
        scoring); step-by-step decoding with caches stays eager, since its growing caches would recompile at every
        length. The stack is one graph, not one per block: the first block, which has no focus before it, would
        otherwise recompile the graph that the others share. Widths vary from batch to batch: the first change makes
        the width dynamic (one recompile), and no width recompiles after that. `options` go to torch.compile.

        The decoder is an argument of the compiled function, not bound to it, so that a copy (the EMA's deepcopy)
        runs its own weights."""
        self._compiled_stack = torch.compile(run_blocks, **options)

    def new_caches(self) -> list[tuple[KVCache, KVCache]]:
        """Empty (self-attention, cross-attention) caches, one pair per block, for step-by-step decoding."""
        return [(KVCache(), KVCache()) for _ in self.blocks]

    def embed(self, tokens: Tensor, start: int = 0, positions: Tensor | None = None) -> Tensor:
        """Token plus position embeddings (B*G, T, D); `positions` (B*G, T), each token's place in its own caption,
        for packed rows, else `start`, `start + 1`, ..."""
        if positions is None:
            T = tokens.size(1)
            if start + T > self.max_length:
                raise ValueError(f"caption of {start + T} tokens exceeds max_length {self.max_length}")
            positions = torch.arange(start, start + T, device=tokens.device)
        return self.drop(self.token_embed(tokens) + self.pos_embed(positions))

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        caches: list[tuple[KVCache, KVCache]] | None = None,
        start: int = 0,
        mask: Tensor | None = None,
        packing: PackedRows | None = None,
    ) -> Tensor:
        """Next-token logits.

        Args:
            tokens: (B*G, T) token ids, G captions or beams per image; or, with `packing`, (B, T): the captions of
                each image back to back in one row.
            memory: (B, M, D) image memory.
            caches: from `new_caches`, for incremental decoding; `start` is then the position of tokens[:, 0].
            start: position of the first token.
            mask: (B*G, T) bool, the positions to score, e.g. those whose target is a word and not padding. The
                blocks still see every position; the final norm and the LM head (a D x V product, the widest of the
                step) run only where the mask is set.
            packing: where each packed caption starts (see `packing`): positions restart there, and
                self-attention stays within each caption.

        Returns:
            Logits (B*G, T, V), or (N, V) at the N masked positions in row-major order.
        """
        if caches is None:
            positions, attend = (None, None) if packing is None else (packing.positions, packing.attention_mask())
            x = self.embed(tokens, start, positions)
            x = (self._compiled_stack or run_blocks)(self, x, memory, attend)
        else:
            x, focus = self.embed(tokens, start), None  # focus: where the block before looked (see `focus`)
            for block, cache in zip(self.blocks, caches, strict=True):
                x, focus = block(x, memory, cache, self.memory_grid, focus)
        if mask is not None:
            x = x[mask]  # (B*G, T, D) -> (N, D)
        return self.head(self.norm(x))

    def forward_with_attention(self, tokens: Tensor, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (B*G, T, V) with the self-attention (L, B*G, nh, T, T) and cross-attention (L, B*G, nh, T, M)."""
        x = self.embed(tokens)
        self_maps, cross_maps, focus = [], [], None
        for block in self.blocks:
            x, self_weights, cross_weights, focus = block.forward_with_attention(x, memory, self.memory_grid, focus)
            self_maps.append(self_weights)
            cross_maps.append(cross_weights)
        return self.head(self.norm(x)), torch.stack(self_maps), torch.stack(cross_maps)


def run_blocks(decoder: TextDecoder, x: Tensor, memory: Tensor, attend: Tensor | None = None) -> Tensor:
    """The decoder's blocks over whole captions (B*G, T, D), without caches; `attend` for packed rows."""
    focus = None  # where the block before looked (see `focus`)
    for block in decoder.blocks:
        x, focus = block(x, memory, None, decoder.memory_grid, focus, attend)
    return x


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
