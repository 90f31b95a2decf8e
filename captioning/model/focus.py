"""Where the decoder looked, block by block, so that a caption word can compare two places in one step.

A relation word ("above", "to the left of") depends on where two objects are relative to each other. Cross-attention
brings back what it found with the absolute position codes of the memory mixed in, and comparing two of those is left
to the MLP. Measured on the built-in shapes, a decoder that way learnt on which axis two shapes lie but not which way
round: "A above B" against its foil "A below B" stayed at chance in every run, 6 or 16 epochs. So each block also
reports where each of its heads looked (the attention-weighted grid coordinates) and adds a learned projection of each
head's offset from where the block before it looked: "the shape I look at now is below the one I looked at" becomes a
linear read-out. With `between_heads`, a block also adds each head's place relative to each other head's in the same
block: one head on the shape just named, another spread over all the shapes, and "above" or "below" is the sign of
their difference, read in one block instead of compared across two (see the README's measurements). A cousin of the
geometry terms of relation-aware captioners (Herdade et al., 2019, "Image Captioning: Transforming Objects into
Words"), taken relative to the decoder's own focus instead of to object boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def grid_coordinates(grid_size: tuple[int, int], num_prefix: int) -> Tensor:
    """(M, 3) per memory token: its row and column scaled to [-1, 1], and 1 for a grid token (0 for the class and
    register tokens before the grid, whose attention is left out of where a head looked)."""
    H, W = grid_size
    rows, columns = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    grid = torch.stack([rows.flatten(), columns.flatten(), torch.ones(H * W)], dim=1)  # (H*W, 3)
    return torch.cat([torch.zeros(num_prefix, 3), grid])


class FocusOffsets(nn.Module):
    """Each head's place of attention, as an offset from the previous block's focus, projected into the residual.

    Args:
        dim: the decoder's width D.
        num_heads: the cross-attention's heads.
        between_heads: also add each head's place relative to each other head's (nh * (nh - 1) / 2 pairs).
    """

    def __init__(self, dim: int, num_heads: int, between_heads: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * num_heads, dim)
        pairs = torch.triu_indices(num_heads, num_heads, offset=1)  # (2, P): head i < head j
        self.register_buffer("pairs", pairs, persistent=False)
        self.between = nn.Linear(2 * pairs.size(1), dim, bias=False) if between_heads else None

    def forward(self, found: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """
        Args:
            found: (B*G, nh, T, 3) the attention-weighted `grid_coordinates` of each head.
            previous: (B*G, T, 2) the previous block's focus, None in the first block (offsets from the centre).

        Returns:
            What to add to the residual (B*G, T, D), and this block's focus (B*G, T, 2): its heads' places, averaged.
        """
        places = found[..., :2] / found[..., 2:].clamp_min(1e-6)  # (B*G, nh, T, 2): the mean over grid tokens only
        offsets = places if previous is None else places - previous[:, None]
        added = self.proj(offsets.transpose(1, 2).flatten(2))
        if self.between is not None:
            between = places[:, self.pairs[0]] - places[:, self.pairs[1]]  # (B*G, P, T, 2)
            added = added + self.between(between.transpose(1, 2).flatten(2))
        return added, places.mean(dim=1)
