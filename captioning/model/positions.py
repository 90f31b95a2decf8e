"""Where each memory token sits on the encoder's grid, added to the memory so that "left of" and "above" can be read.

CNN feature maps carry little position of their own, and a ViT's position embedding is mixed away by its blocks.
Codes of a token's (row, column), each a (1, M, D) table added to the projected memory:
- "sincos": fixed 2D sine-cosine, half the channels for the row and half for the column (MAE, He et al., 2022);
  at the scale of the LayerNorm'd memory from the first step, and nothing to learn;
- "rowcol": a learned row and a learned column embedding, added (DETR's learned positions, Carion et al., 2020):
  one vector per row shared by its whole row, so a place is learned from every image that has a shape there;
Tokens off the grid (a ViT's class and register tokens) get zeros from "sincos" and a learned vector from "rowcol".
(The model's third option, "learned", a free vector per token as checkpoints before these codes hold it, is a plain
parameter of `CaptioningModel`.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from captioning.errors import UserError

MEMORY_POSITIONS = ("sincos", "rowcol")


class MemoryPositions(nn.Module):
    """A (1, M, D) position code of the memory: `num_prefix` tokens off the grid, then the grid row by row.

    Args:
        kind: "sincos" or "rowcol".
        grid_size: (H, W) of the encoder's grid.
        num_prefix: tokens before the grid (class and register tokens).
        dim: D, the memory's width.
    """

    def __init__(self, kind: str, grid_size: tuple[int, int], num_prefix: int, dim: int) -> None:
        super().__init__()
        if kind not in MEMORY_POSITIONS:
            raise UserError(f"model.memory_positions: '{kind}' is not one of sincos, rowcol, learned")
        self.kind, self.grid_size, self.num_prefix = kind, tuple(grid_size), num_prefix
        H, W = self.grid_size
        if kind == "sincos":
            # computed, not saved: a change to `sincos_2d` would change every such checkpoint (add a kind instead)
            self.register_buffer("table", sincos_2d(H, W, dim), persistent=False)
        elif kind == "rowcol":
            self.row = nn.Parameter(torch.randn(H, dim) * 0.5)  # the two add up to about the memory's scale
            self.column = nn.Parameter(torch.randn(W, dim) * 0.5)
        if kind == "rowcol" and num_prefix:
            self.prefix = nn.Parameter(torch.randn(num_prefix, dim) * 0.02)

    def forward(self) -> Tensor:
        """The code (1, M, D)."""
        if self.kind == "sincos":
            grid = self.table  # (H*W, D)
        else:
            grid = (self.row[:, None] + self.column[None, :]).flatten(0, 1)  # (H, 1, D) + (1, W, D) -> (H*W, D)
        if self.num_prefix:
            prefix = getattr(self, "prefix", None)
            prefix = prefix if prefix is not None else grid.new_zeros(self.num_prefix, grid.size(1))
            grid = torch.cat([prefix, grid])  # (P + H*W, D)
        return grid[None]


def sincos_2d(height: int, width: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine positions (H*W, D): rows in the first D/2 channels, columns in the last D/2.

    Frequencies are spread geometrically from half a turn over the whole side (a monotone code of where a token is)
    to half a turn per cell (which neighbour it is, in the cosine), so the channels vary on a small grid; integer
    positions with the usual base of 10,000 would leave most of them constant on a 4x4 grid.
    """
    if dim % 4:
        raise UserError(f"sine-cosine positions need a width divisible by 4, got {dim}")
    quarter = dim // 4

    def encode(size: int) -> Tensor:  # (size, D/2)
        frequencies = size ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter - 1))  # (D/4,) 1 .. size
        angles = torch.arange(size, dtype=torch.float64)[:, None] * (math.pi / size) * frequencies  # (size, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1).float()

    rows, columns = encode(height), encode(width)  # (H, D/2), (W, D/2)
    table = torch.cat([rows[:, None].expand(-1, width, -1), columns[None].expand(height, -1, -1)], dim=-1)
    return table.flatten(0, 1)  # (H, W, D) -> (H*W, D)
