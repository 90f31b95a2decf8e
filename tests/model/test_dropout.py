"""The decoder's dropout: masks drawn from integers on CPU, with torch's keep rate, scaling, gradient and seeding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captioning.model import Attention
from captioning.model.dropout import Dropout, draws_integer_masks, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drops_at_rate_p_and_scales_what_it_keeps_to_keep_the_mean(p):
    torch.manual_seed(0)
    x = torch.rand(500, 1001) + 0.5  # an odd count: the last 64-bit word is only partly used
    y = dropout(x, p)
    kept = y != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-4, atol=0)
    spread = (p / (1 - p) * x.square().mean() / n).sqrt().item()  # the standard deviation of y's mean
    assert abs(y.mean().item() - x.mean().item()) < 5 * spread


def test_masks_are_independent_of_one_another_and_of_their_place():
    torch.manual_seed(0)
    kept = (dropout(torch.ones(4000, 8, 64), 0.5) != 0).float()
    # the four lanes of one 64-bit word sit side by side: neighbours must agree no more often than chance
    agree = (kept[..., 1:] == kept[..., :-1]).float().mean().item()
    assert agree == pytest.approx(0.5, abs=0.01)
    assert kept.mean(dim=(0, 1)).sub(0.5).abs().max().item() < 0.03  # every position keeps about half


def test_the_gradient_passes_through_the_kept_elements_scaled():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16, requires_grad=True)
    y = dropout(x, 0.3)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y.detach() != 0
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.7, 0.0), rtol=1e-3, atol=1e-6)


def test_the_same_seed_draws_the_same_mask():
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    b = dropout(x, 0.2)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_off_in_eval_at_zero_and_torchs_own_at_one():
    x = torch.randn(4, 5)
    module = Dropout(0.5).eval()
    assert module(x) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert isinstance(module, torch.nn.Dropout)  # what code that looks for dropout sites finds


def test_a_compiled_graph_draws_the_same_masks_without_a_break():
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    x = torch.randn(40, 65, requires_grad=True)
    compiled = torch.compile(lambda x: dropout(x, 0.3) * 2, backend=backend, fullgraph=True, dynamic=True)
    for rows in (33, 17):  # two sizes through one dynamic graph
        torch.manual_seed(1)
        eager = dropout(x[:rows], 0.3) * 2
        torch.manual_seed(1)
        torch.testing.assert_close(compiled(x[:rows]), eager)
    assert len(graphs) == 1
    assert draws_integer_masks(x, 0.5) and not draws_integer_masks(x, 0.0) and not draws_integer_masks(x, 1.0)


def test_half_precision_keeps_torchs_dropout_and_its_mean():
    """A mask in bfloat16 would carry a rounded scale (1.109 for 1.111): bfloat16 goes to torch's dropout."""
    x = torch.ones(1000, 1000, dtype=torch.bfloat16)
    assert not draws_integer_masks(x, 0.1)
    torch.manual_seed(0)
    assert dropout(x, 0.1).float().mean().item() == pytest.approx(1.0, abs=3e-3)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_with_dropout_averages_to_attention_without(cross):
    """The written-out attention that carries the masks on CPU is unbiased: over many draws, its output is the
    output without dropout; and each draw differs from it."""
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=2, dropout=0.3)
    x, memory = torch.randn(4, 6, 16), torch.randn(2, 9, 16)
    context = memory if cross else None
    with torch.no_grad():
        exact = attention.eval()(x, context, is_causal=not cross)
        attention.train()
        draws = torch.stack([attention(x, context, is_causal=not cross) for _ in range(4000)])
    assert (draws[0] - exact).abs().max() > 1e-3
    torch.testing.assert_close(draws.mean(0), exact, atol=0.02, rtol=0)


def test_matches_torchs_dropout_in_distribution():
    """Both keep about 1 - p of a large tensor and scale by about 1 / (1 - p): a model trains the same either way."""
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    ours, theirs = dropout(x, 0.1), F.dropout(x, 0.1)
    assert (ours != 0).float().mean().item() == pytest.approx((theirs != 0).float().mean().item(), abs=2e-3)
    assert ours.max().item() == pytest.approx(theirs.max().item(), rel=1e-4)
