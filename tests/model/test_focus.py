"""Focus offsets: each decoder block reports where its heads looked (and where each head looked relative to the
others), and checkpoints from before still load."""

from __future__ import annotations

import torch

from captioning.model import CaptioningModel, ModelConfig
from captioning.model.focus import FocusOffsets, grid_coordinates


def tiny(encoder: str = "test_resnet", **options) -> CaptioningModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, encoder=encoder, image_size=64, dim=32, num_heads=2, depth=2, **options)
    return CaptioningModel(config).eval()


def test_grid_coordinates_run_row_by_row_after_the_tokens_off_the_grid():
    coordinates = grid_coordinates((2, 3), num_prefix=1)  # (1 + 6, 3): row, column, on the grid
    assert coordinates[0].tolist() == [0.0, 0.0, 0.0]
    assert coordinates[1].tolist() == [-1.0, -1.0, 1.0] and coordinates[6].tolist() == [1.0, 1.0, 1.0]
    assert coordinates[2].tolist() == [-1.0, 0.0, 1.0]  # the next column of the top row


def test_a_head_that_looks_at_one_cell_reports_that_cell_and_its_offset_from_the_focus_before():
    grid = grid_coordinates((3, 3), num_prefix=1)  # a class token, then 3 x 3 cells
    weights = torch.zeros(1, 2, 1, 10)  # (B, nh, T, M)
    weights[0, 0, 0, 1] = 1.0  # head 0: the top-left cell
    weights[0, 1, 0, 0], weights[0, 1, 0, 9] = 0.5, 0.5  # head 1: half on the class token, half bottom-right
    focus = FocusOffsets(dim=4, num_heads=2)
    focus.proj = torch.nn.Identity()  # read the offsets themselves
    offsets, place = focus(weights @ grid, previous=torch.tensor([[[1.0, 0.0]]]))
    assert offsets.tolist() == [[[-2.0, -1.0, 0.0, 1.0]]]  # (row, column) of each head, minus the focus before
    assert place.tolist() == [[[0.0, 0.0]]]  # the heads' places, averaged: top-left and bottom-right


def test_head_offsets_are_each_heads_place_minus_each_later_heads_and_change_sign_when_they_swap():
    grid = grid_coordinates((3, 3), num_prefix=0)
    weights = torch.zeros(1, 3, 1, 9)  # three heads on the top-left, the centre, the bottom-left cell
    weights[0, 0, 0, 0], weights[0, 1, 0, 4], weights[0, 2, 0, 6] = 1.0, 1.0, 1.0
    focus = FocusOffsets(dim=6, num_heads=3, between_heads=True)
    focus.proj = torch.nn.Linear(6, 6, bias=False)
    torch.nn.init.zeros_(focus.proj.weight)  # only the offsets between heads
    focus.between.weight.data = torch.eye(6)
    added, _ = focus(weights @ grid, previous=None)
    assert added.tolist() == [[[-1.0, -1.0, -2.0, 0.0, -1.0, 1.0]]]  # heads 0-1, 0-2, 1-2: (row, column) each
    swapped, _ = focus(weights[:, [1, 0, 2]] @ grid, previous=None)
    assert swapped[0, 0, :2].tolist() == [1.0, 1.0]  # "above" became "below": one sign, read in one block


def test_step_by_step_decoding_and_the_attention_pass_compute_the_full_pass():
    for encoder in ("test_resnet", "test_vit"):  # a CNN grid, and a ViT's class token before its grid
        model = tiny(encoder)
        images, tokens = torch.randn(2, 3, 64, 64), torch.randint(3, 20, (2, 7))
        with torch.no_grad():
            full = model(images, tokens)
            memory, caches = model.encode(images), model.decoder.new_caches()
            steps = torch.cat([model.decoder(tokens[:, i : i + 1], memory, caches, start=i) for i in range(7)], 1)
            explicit, _, _ = model.decoder.forward_with_attention(tokens, memory)
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(explicit, full, atol=1e-5, rtol=1e-5)


def test_where_the_heads_look_changes_the_next_word_and_checkpoints_from_before_load_without_it():
    model = tiny()
    assert all(block.focus is not None for block in model.decoder.blocks)
    images, tokens = torch.randn(1, 3, 64, 64), torch.randint(3, 20, (1, 5))
    with torch.no_grad():
        for block in model.decoder.blocks:
            torch.nn.init.normal_(block.focus.proj.weight, std=1.0)
        before = model(images, tokens)
        model.decoder.memory_grid[:, :2] = model.decoder.memory_grid[:, :2].flip(0)  # the grid upside down
        assert not torch.allclose(model(images, tokens), before)
    old = ModelConfig.from_dict({"vocab_size": 20, "encoder": "test_resnet", "image_size": 64, "dim": 32})
    assert not old.focus_offsets  # a checkpoint written before the option: plain blocks, as it was trained
    assert not any(".focus." in key for key in CaptioningModel(old).state_dict())
    focus_only = ModelConfig.from_dict({**old.to_dict(), "focus_offsets": True})  # yesterday's focus checkpoints
    assert not focus_only.head_offsets and not any(".between." in k for k in CaptioningModel(focus_only).state_dict())
    assert any(".focus.between." in key for key in model.state_dict())  # new models compare their heads
