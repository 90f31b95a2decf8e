"""Memory position codes: every grid cell gets its own code, and checkpoints from before the option still load."""

from __future__ import annotations

import pytest
import torch

from captioning.model import CaptioningModel, ModelConfig
from captioning.model.positions import MemoryPositions, sincos_2d


def test_sincos_codes_tell_every_cell_apart_and_neighbours_are_closer_than_far_cells():
    table = sincos_2d(4, 4, 32)  # (16, 32), row by row
    distances = torch.cdist(table, table)
    assert distances.masked_fill(torch.eye(16, dtype=torch.bool), 1.0).min() > 0.5  # all distinct
    assert distances[0, 1] < distances[0, 3] and distances[0, 4] < distances[0, 12]  # along a row and a column
    assert (table.var(dim=0) > 0.01).float().mean() > 0.9  # nearly every channel varies on a small grid


@pytest.mark.parametrize("kind", ["sincos", "rowcol"])
def test_class_tokens_come_first_and_cells_row_by_row(kind):
    positions = MemoryPositions(kind, (2, 3), num_prefix=1, dim=8)
    table = positions()[0]  # (1 + 6, 8)
    assert table.shape == (7, 8)
    if kind == "rowcol":  # a row's cells share its row vector: the difference of two columns is the same in each row
        torch.testing.assert_close(table[1] - table[2], table[4] - table[5])


def test_a_checkpoint_config_without_the_option_is_the_learned_table_it_was_trained_with():
    config = ModelConfig.from_dict({"vocab_size": 20, "encoder": "test_resnet", "image_size": 64, "dim": 32})
    assert config.memory_positions == "learned"
    model = CaptioningModel(config)
    assert "memory_pos" in model.state_dict() and not any(k.startswith("memory_positions") for k in model.state_dict())
    fresh = CaptioningModel(ModelConfig(vocab_size=20, encoder="test_resnet", image_size=64, dim=32))
    assert fresh.config.memory_positions == "sincos" and "memory_pos" not in fresh.state_dict()


@pytest.mark.parametrize("layers", [0, 1])
def test_memory_blocks_let_every_token_see_the_others_and_none_keeps_tokens_apart(layers):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, encoder="test_resnet", image_size=64, dim=32, num_heads=2, memory_layers=layers)
    model = CaptioningModel(config).eval()
    features = torch.randn(1, model.encoder.num_tokens, model.encoder.feature_dim)  # (1, M, C_enc)
    changed = features.clone()
    changed[0, 0] += 1.0  # one token's features
    with torch.no_grad():
        moved = (model.project(changed) - model.project(features)).abs().amax(dim=-1)[0]  # (1 + M,)
    grid = moved[model.num_prefix_tokens :]  # the sink comes first
    assert grid[0] > 0
    assert (grid[1:] > 0).all() if layers else (grid[1:] == 0).all()
