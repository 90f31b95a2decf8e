"""Packed rows: the K captions of an image back to back in one row, so that a batch pads only at the end of rows.

Captions of one image differ in length. Padded one per row to the longest of the batch, about a third of the
decoder's positions are padding (COCO, 5 captions per image); packed one image per row, about a tenth. Every caption
of a row attends to the same image, so cross-attention is unchanged. The decoder reads a packed row as K captions:
positions restart where each caption starts, and self-attention stays within its caption (a block-diagonal causal
mask). The loss is the same as over padded rows, and it needs no host sync: the collate packs, on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedRows:
    """Where the captions of packed rows lie: `positions` (B, T), each token's place in its own caption, and
    `segments` (B, T), which caption of the row it belongs to (the padding after the last one counts as one more)."""

    positions: Tensor
    segments: Tensor

    @classmethod
    def of(cls, batch: dict[str, Tensor]) -> PackedRows:
        """The packing of a batch that `pack_captions` made (the training collate's)."""
        return cls(batch["positions"], batch["segments"])

    def attention_mask(self) -> Tensor:
        """(B, 1, T, T) bool: a token sees itself and the earlier tokens of its own caption."""
        T = self.segments.size(1)
        same = self.segments[:, :, None] == self.segments[:, None, :]  # (B, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=same.device).tril()
        return (same & causal)[:, None]


def pack_captions(tokens: Tensor, per_image: int, pad_id: int) -> dict[str, Tensor]:
    """Padded captions (B*K, W) `[BOS] w.. [EOS] [PAD]..`, K per image in consecutive rows -> one row per image.

    Returns "inputs" (B, T), what the decoder reads (each caption without its end token), "targets" (B, T), what it
    should write next (each caption without its start token), "positions" and "segments" (see `PackedRows`); `pad_id`
    after the last caption of a row, where the targets are ignored.
    """
    captions = [[t for t in row if t != pad_id] for row in tokens.tolist()]  # start and end tokens included
    rows = [captions[i : i + per_image] for i in range(0, len(captions), per_image)]
    columns = {  # plain lists, one per row: a collate packs hundreds of captions per batch
        "inputs": [[t for caption in row for t in caption[:-1]] for row in rows],
        "targets": [[t for caption in row for t in caption[1:]] for row in rows],
        "positions": [[p for caption in row for p in range(len(caption) - 1)] for row in rows],
        "segments": [[k for k, caption in enumerate(row) for _ in caption[1:]] for row in rows],
    }
    width = max((len(row) for row in columns["inputs"]), default=0)
    fill = {"inputs": pad_id, "targets": pad_id, "positions": 0, "segments": per_image}
    packed = {}
    for name, values in columns.items():
        padded = [row + [fill[name]] * (width - len(row)) for row in values]
        packed[name] = torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)
    return packed
