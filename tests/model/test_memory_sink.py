import torch

from captioning.model.attention import Attention
from captioning.model.captioner import CaptioningModel, ModelConfig


def test_a_sink_lets_cross_attention_tell_two_matching_tokens_from_five():
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=2).eval()
    query, found, sink = torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    two, five = found.expand(1, 2, 16), found.expand(1, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(attention(query, two), attention(query, five))  # softmax averages the count away
        with_sink = [attention(query, torch.cat([sink, many], dim=1)) for many in (two, five)]
    assert (with_sink[0] - with_sink[1]).abs().max() > 1e-3


def test_the_sink_is_one_learned_token_in_front_of_every_memory_and_off_unless_asked_for():
    config = ModelConfig(vocab_size=20, encoder="test_resnet", image_size=64, dim=32, num_heads=2, memory_sink=True)
    model = CaptioningModel(config).eval()
    with torch.no_grad():
        memory = model.encode(torch.rand(3, 3, 64, 64))  # (B, 1 + M, D)
    assert model.num_prefix_tokens == 1
    assert memory.shape[1] == 1 + model.encoder.num_tokens
    assert (memory[:, 0] == model.memory_sink[0]).all()  # the same learned token for every image
    assert (model.decoder.memory_grid[0] == 0).all()  # and not a place on the grid (see `focus`)

    before = ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "memory_sink"})  # older
    assert not before.memory_sink and "memory_sink" not in CaptioningModel(before).state_dict()
