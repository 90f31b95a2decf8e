"""The compiled model (Dynamo with the "eager" backend: what it captures, on any machine) over caption widths 8..30:
the training forward and backward and SCST's teacher-forced pass run without a graph break and recompile at most
twice. Compiled and eager passes give the same logits."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from captioning.model import CaptioningModel, ModelConfig
from tests.conftest import TINY_MODEL
from tests.training.audit import step_audit


@pytest.mark.parametrize("encoder", ["test_convnext", "test_resnet"])  # LayerNorm and BatchNorm trunks
def test_the_compiled_passes_never_break_the_graph_and_recompile_at_most_twice_over_widths_8_to_30(encoder, one_thread):
    config = {"model": {**TINY_MODEL, "encoder": encoder, "dropout": 0.1}, "data": {"captions_per_image": 5}}
    result = step_audit.compile_audit(config, range(8, 31), scst_samples=3)
    assert result["graph_breaks"] == 0, result["graph_break_reasons"]
    assert result["xe_recompiles"] <= 2 and result["scst_recompiles"] <= 2  # one, when the width first changes


def test_the_compiled_decoder_gives_the_eager_logits(one_thread):
    torch.manual_seed(0)
    model = CaptioningModel(ModelConfig(vocab_size=50, dropout=0.0, **TINY_MODEL)).eval()
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(3, 50, (6, 11))
    with torch.no_grad():
        eager = model(images, tokens)
        model.compile_parts(backend="eager")
        compiled = model(images, tokens)
    torch.testing.assert_close(compiled, eager)


def test_a_copy_of_a_compiled_model_runs_its_own_weights(one_thread):
    """The EMA keeps a deepcopy of the (compiled) model: its compiled passes must read the copy's weights."""
    torch.manual_seed(0)
    model = CaptioningModel(ModelConfig(vocab_size=50, dropout=0.0, **TINY_MODEL)).eval()
    model.compile_parts(backend="eager")
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(3, 50, (6, 11))
    copy = deepcopy(model)
    with torch.no_grad():
        for p in copy.decoder.blocks.parameters():
            p.mul_(0.5)
        mine, theirs = model(images, tokens), copy(images, tokens)
        copy.compile_parts(backend="eager")  # compiled afresh: the reference
        torch.testing.assert_close(theirs, copy(images, tokens))
    assert not torch.allclose(mine, theirs)
