"""The captioning model: ImageEncoder -> projection -> memory; TextDecoder cross-attends to the memory.

Each image is encoded once; its K captions (or beams) share its memory through the cross-attention, which
stacks their queries per image instead of copying the memory (see `Attention`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from captioning.errors import UserError
from captioning.model.decoder import TextDecoder
from captioning.model.encoder import ImageEncoder
from captioning.model.focus import grid_coordinates
from captioning.model.memory_encoder import MemoryBlock
from captioning.model.positions import MemoryPositions


@dataclass
class ModelConfig:
    """Hyper-parameters of a CaptioningModel; stored in every checkpoint."""

    vocab_size: int
    encoder: str = "test_convnext"
    pretrained: bool = False
    freeze_encoder: bool = False
    image_size: int | None = None
    encoder_output_stride: int | None = None
    dim: int = 256
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0
    max_length: int = 24
    dropout: float = 0.1
    memory_positions: str = "sincos"
    memory_layers: int = 0
    focus_offsets: bool = True
    head_offsets: bool = True
    memory_sink: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        # checkpoints from before these options: a learned position table, blocks that do not pass on their focus
        values = {"memory_positions": "learned", "focus_offsets": False, "head_offsets": False, **values}
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        return cls(**values)


class CaptioningModel(nn.Module):
    """Image encoder, projection to the decoder width, and the text decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(
            config.encoder, config.pretrained, config.freeze_encoder, config.image_size, config.encoder_output_stride
        )
        self.projection = nn.Sequential(nn.Linear(self.encoder.feature_dim, config.dim), nn.LayerNorm(config.dim))
        # CNN feature maps carry little position of their own: without this, "left of" and "above" are hard to read.
        grid, prefix = self.encoder.grid_size, self.encoder.num_prefix_tokens
        if config.memory_positions == "learned":  # a free vector per token, as older checkpoints hold it
            self.memory_pos = nn.Parameter(torch.zeros(1, self.encoder.num_tokens, config.dim))
            nn.init.normal_(self.memory_pos, std=0.02)
        else:
            self.memory_positions = MemoryPositions(config.memory_positions, grid, prefix, config.dim)
        # Softmax attention averages what it finds, so "two red circles" and "five red circles" read the same; a learned
        # token that every query may also attend to lets the share left to it tell how much was found (see `project`).
        self.memory_sink = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.memory_sink else None
        block = dict(num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, dropout=config.dropout)
        self.memory_blocks = nn.ModuleList(MemoryBlock(config.dim, **block) for _ in range(config.memory_layers))
        self.decoder = TextDecoder(
            config.vocab_size,
            dim=config.dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            max_length=config.max_length,
            dropout=config.dropout,
            memory_grid=grid_coordinates(grid, self.num_prefix_tokens) if config.focus_offsets else None,
            head_offsets=config.head_offsets,
        )

    @property
    def num_prefix_tokens(self) -> int:
        """Memory tokens before the grid: the sink, then the encoder's class and register tokens."""
        return int(self.config.memory_sink) + self.encoder.num_prefix_tokens

    def compile_parts(self, **options) -> None:
        """torch.compile of the encoder and of the decoder's stack of blocks; the state_dict keeps its names.

        The stack of blocks is one graph; the parts around it (embeddings, the LM head) stay eager, as does
        step-by-step generation (see `TextDecoder.compile_blocks`). `options` go to `torch.compile` (e.g.
        mode="max-autotune").
        """
        self.encoder.compile(**options)
        self.decoder.compile_blocks(**options)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> memory (B, M, D)."""
        return self.project(self.encoder(images))

    def project(self, features: Tensor) -> Tensor:
        """Encoder tokens (B, M, C_enc) -> memory (B, M', D), M' = M + 1 with the sink in front; apart from `encode`
        so cached features can skip it."""
        positions = self.memory_pos if self.config.memory_positions == "learned" else self.memory_positions()
        memory = self.projection(features) + positions  # (B, M, D) + (1, M, D)
        if self.memory_sink is not None:  # attended to in place of the grid: a query that finds less leaves it more
            memory = torch.cat([self.memory_sink.expand(memory.size(0), -1, -1), memory], dim=1)  # (B, 1 + M, D)
        for block in self.memory_blocks:  # each token gathers where the others are (see memory_encoder)
            memory = block(memory)
        return memory

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits.

        Args:
            images: (B, 3, H, W).
            tokens: (B*K, T), the K captions of each image in consecutive rows.
            mask: (B*K, T) bool, the positions to score (see `TextDecoder.forward`); None for all.

        Returns:
            Logits (B*K, T, V), or (N, V) at the N masked positions.
        """
        return self.decoder(tokens, self.encode(images), mask=mask)
