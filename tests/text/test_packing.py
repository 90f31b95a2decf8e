"""Packed rows: each image's captions back to back in one row read as the same captions padded one per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captioning.model import CaptioningModel, ModelConfig
from captioning.text.packing import PackedRows, pack_captions
from tests.conftest import TINY_MODEL

PAD, BOS, EOS = 0, 1, 2


def padded_captions(lengths: list[int], vocab_size: int = 50) -> torch.Tensor:
    """(N, W) `[BOS] w.. [EOS] [PAD]..` with the given numbers of words."""
    generator = torch.Generator().manual_seed(0)
    rows = [[BOS, *torch.randint(3, vocab_size, (n,), generator=generator).tolist(), EOS] for n in lengths]
    width = max(len(row) for row in rows)
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows])


def test_each_row_holds_its_images_captions_back_to_back_and_positions_restart_at_each():
    tokens = padded_captions([2, 0, 3, 1])  # two images, two captions each; an empty caption reads its start token
    packed = pack_captions(tokens, per_image=2, pad_id=PAD)
    a, b, c, d = (row[row != PAD].tolist() for row in tokens)
    assert packed["inputs"].tolist() == [a[:-1] + b[:-1] + [PAD, PAD], c[:-1] + d[:-1]]
    assert packed["targets"].tolist() == [a[1:] + b[1:] + [PAD, PAD], c[1:] + d[1:]]
    assert packed["positions"].tolist() == [[0, 1, 2, 0, 0, 0], [0, 1, 2, 3, 0, 1]]
    assert packed["segments"].tolist() == [[0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1]]  # the padding: one more
    mask = PackedRows.of(packed).attention_mask()  # (B, 1, T, T)
    assert mask[0, 0, 3].tolist() == [False, False, False, True, False, False]  # b sees itself, not a
    assert mask[1, 0, 5].tolist() == [False, False, False, False, True, True]  # d's second token: d's first, itself


def test_the_decoder_gives_packed_rows_the_logits_and_the_loss_of_captions_padded_one_per_row(one_thread):
    torch.manual_seed(0)
    model = CaptioningModel(ModelConfig(vocab_size=50, dropout=0.0, **TINY_MODEL)).eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = padded_captions([5, 1, 9, 3, 3, 7, 12, 2, 4])  # three images, three captions each
    packed = pack_captions(tokens, per_image=3, pad_id=PAD)
    packing = PackedRows.of(packed)
    with torch.no_grad():
        padded = model(images, tokens[:, :-1])  # (9, W-1, V)
        for compiled in (False, True):
            if compiled:
                model.compile_parts(backend="eager")
            logits = model.decoder(packed["inputs"], model.encode(images), packing=packing)  # (3, T, V)
            real = tokens[:, 1:] != PAD
            torch.testing.assert_close(logits[packed["targets"] != PAD], padded[real])
            loss = F.cross_entropy(logits.flatten(0, 1), packed["targets"].flatten(), ignore_index=PAD)
            torch.testing.assert_close(loss, F.cross_entropy(padded[real], tokens[:, 1:][real]))
