"""Self-critical training's parts: the leave-one-out baseline, the caption log-probability with its end token, and
one policy-gradient step on a real model, which must move probability towards the captions that beat the baseline."""

from __future__ import annotations

import torch

from captioning.decoding import DecodeSpec, TokenIds
from captioning.metrics import CaptionScorer
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import decode
from captioning.text.tokenizer import CaptionTokenizer
from captioning.training import scst

EOS, PAD, BOS = 2, 0, 1


def test_a_samples_own_reward_never_enters_its_baseline():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 0.0, 5.0])  # two images, three samples each
    baselines = scst.leave_one_out_baseline(rewards, 3)
    assert torch.allclose(baselines, torch.tensor([2.5, 2.0, 1.5, 2.5, 7.5, 5.0]))
    changed = rewards.clone()
    changed[1] = 100.0
    moved = scst.leave_one_out_baseline(changed, 3)
    assert moved[1] == baselines[1]  # its own reward changed, its baseline did not
    assert (moved[[0, 2]] != baselines[[0, 2]]).all() and torch.equal(moved[3:], baselines[3:])  # others' did


def test_reward_is_the_cider_d_of_the_words_before_the_end_token():
    references = {7: ["There's a red circle.", "A red circle on grey."], 8: ["Two blue squares.", "two blue squares"]}
    tokenizer = CaptionTokenizer.train([c for refs in references.values() for c in refs], min_frequency=1)
    reward = scst.CiderReward(references, tokenizer)
    captions = ["there's a red circle", "two blue squares", "two blue squares"]
    tokens = tokenizer.encode(captions, max_length=8)[:, 1:]  # after the start token, padded after the end token
    mask, _ = scst.caption_mask(tokens, tokenizer.eos_id)
    rewards = reward(tokens, mask, [7, 8, 7])
    direct = reward.cider.score_batch(["there 's a red circle", "two blue squares", "two blue squares"], [7, 8, 7])
    assert torch.allclose(rewards, torch.tensor(direct, dtype=torch.float32))  # padding and what follows the end
    assert rewards[0] > 1 and rewards[1] > 1 and rewards[2] == 0  # token are not words; the wrong image earns 0


def test_a_chinese_reward_scores_the_caption_as_evaluation_reads_it():
    references = {
        1: ["一个红色的圆形在蓝色正方形的上方", "红色圆形上方没有别的图形"],
        2: ["两个绿色的三角形", "图中有两个绿色三角形"],
    }
    tokenizer = CaptionTokenizer.train([c for refs in references.values() for c in refs], 1, language="zh")
    reward = scst.CiderReward(references, tokenizer)
    captions = ["一个红色的圆形在蓝色正方形的上方", "图中有两个绿色三角形"]
    tokens = tokenizer.encode(captions, max_length=16)[:, 1:]
    mask, _ = scst.caption_mask(tokens, tokenizer.eos_id)
    rewards = reward(tokens, mask, [1, 2])
    scorer = CaptionScorer(references, metrics=["CIDEr"], language="zh")
    evaluated = scorer.score(dict(zip([1, 2], captions, strict=True)), per_image=True)["per_image"]
    assert torch.allclose(rewards, torch.tensor([evaluated[1]["CIDEr"], evaluated[2]["CIDEr"]]))
    assert rewards.min() > 1  # jieba's words of the decoded caption match the references'


def test_the_end_token_is_part_of_the_log_probability_and_padding_is_not():
    tokens = torch.tensor([[5, 6, EOS, PAD, PAD], [7, 7, 7, 7, 7]])  # the second caption never ended
    mask, ended = scst.caption_mask(tokens, EOS)
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert ended.tolist() == [True, False]
    logits = torch.randn(2, 5, 10, requires_grad=True)
    log_probs, entropy = scst.sequence_log_probs(logits, tokens, mask)
    per_token = logits.log_softmax(-1).gather(2, tokens[..., None]).squeeze(2)
    assert torch.allclose(log_probs[0], per_token[0, :3].sum())  # words and the end token, not the padding
    assert torch.allclose(log_probs[1], per_token[1].sum())
    assert 0 < entropy < torch.log(torch.tensor(10.0))
    banned = logits.detach().index_fill(-1, torch.tensor([PAD]), float("-inf"))  # padding is never written
    log_probs, entropy = scst.sequence_log_probs(banned, tokens, mask)
    assert log_probs.isfinite().all() and entropy.isfinite()


def test_entropy_ignores_tokens_the_policy_cannot_write():
    logits = torch.zeros(1, 1, 4)
    logits[..., 0] = float("-inf")  # a suppressed token
    _, entropy = scst.sequence_log_probs(logits, torch.tensor([[1]]), torch.tensor([[True]]))
    assert torch.isclose(entropy, torch.log(torch.tensor(3.0)))


def test_sample_above_baseline_gains_probability_and_below_baseline_loses():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=12, encoder="test_convnext", image_size=32, dim=32, depth=2, num_heads=2,
                         max_length=8, dropout=0.0, freeze_encoder=True)  # fmt: skip
    model = CaptioningModel(config)
    images = torch.rand(2, 3, 32, 32)
    K = 4
    with torch.no_grad():
        spec = DecodeSpec(mode="sample", num_samples=K, min_length=0, seed=0)
        samples = decode(model.decoder, model.encode(images), spec, TokenIds(BOS, EOS, PAD))
    tokens = samples.tokens  # (B*K, L)
    mask, _ = scst.caption_mask(tokens, EOS)
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)

    def log_probs() -> torch.Tensor:
        logits = model.decoder(inputs, model.encode(images))
        return scst.sequence_log_probs(logits, tokens, mask)[0]

    rewards = torch.tensor([1.0, 0.2, 0.2, 0.2, 0.5, 0.5, 0.5, 0.0])  # one winner, one loser
    baselines = scst.leave_one_out_baseline(rewards, K)
    before = log_probs().detach()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    scst.self_critical_loss(log_probs(), rewards, baselines).backward()
    optimizer.step()
    after = log_probs().detach()
    assert after[0] > before[0]  # above its baseline: more likely
    assert after[7] < before[7]  # below its baseline: less likely
