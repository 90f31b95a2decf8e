"""Self-critical sequence training (SCST; Rennie et al., 2017, "Self-critical Sequence Training for Image
Captioning"): the policy gradient of CIDEr-D, with a baseline that needs no value network.

Each image gets K sampled captions; a caption's reward is its CIDEr-D against the image's references, and its
baseline is the mean reward of the image's *other* K-1 samples (the "new SCST" of Luo, 2020, "A Better Variant of
Self-Critical Sequence Training", used by ruotianluo/ImageCaptioning.pytorch), or the reward of the greedy caption
(the original SCST). The loss is -(reward - baseline) x log P(caption), averaged over the samples, where the
caption's log-probability counts every sampled token up to and including the end token.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from captioning.metrics.cider import CiderD
from captioning.metrics.words import ENGLISH, join_words
from captioning.text.tokenizer import CaptionTokenizer


class CiderReward:
    """CIDEr-D of sampled captions against their images' references, with the document frequencies of those
    references: tokenized, counted and weighted once, so that each step only counts the samples' n-grams.

    Args:
        references: {image_id: [caption, ...]}, e.g. the training references.
        tokenizer: the model's tokenizer: its words, its end token, and its language, whose word rule splits the
            references, and the samples too where the language is not English (as evaluation reads them).
    """

    def __init__(self, references: Mapping[Hashable, Sequence[str]], tokenizer: CaptionTokenizer):
        self.language = tokenizer.language
        self.cider = CiderD(references, language=self.language)
        self.id_to_token, self.eos_id = tokenizer.tokenizer.id_to_token, tokenizer.eos_id  # PTB words: "-lrb-"

    def __call__(self, tokens: Tensor, mask: Tensor, image_ids: Sequence[Hashable]) -> Tensor:
        """Rewards (R,) of captions `tokens` (R, L) whose words are the `mask`ed positions (end token aside)."""
        lengths = mask.sum(dim=1).tolist()
        words = [
            [self.id_to_token(t) for t in row[:n] if t != self.eos_id]
            for row, n in zip(tokens.tolist(), lengths, strict=True)
        ]
        if self.language != ENGLISH:  # the caption as decoded, split again: the reward is what evaluation scores
            words = [join_words(caption, self.language) for caption in words]
        scores = self.cider.score_batch(words, image_ids)
        return torch.as_tensor(scores, dtype=torch.float32, device=tokens.device)


def leave_one_out_baseline(rewards: Tensor, samples_per_image: int) -> Tensor:
    """Each sample's baseline: the mean reward of the other samples of its image.

    Args:
        rewards: (B*K,) rewards, the K samples of each image in consecutive rows.
        samples_per_image: K, at least 2.

    Returns:
        (B*K,) baselines; a sample's own reward never enters its baseline.
    """
    K = samples_per_image
    if K < 2:
        raise ValueError(f"the leave-one-out baseline needs at least 2 samples per image, got {K}")
    per_image = rewards.view(-1, K)  # (B, K)
    others = per_image.sum(dim=1, keepdim=True) - per_image  # (B, K): the sum over the other K-1 samples
    return (others / (K - 1)).view(-1)


def caption_mask(tokens: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Which positions of sampled captions count, and which captions ended.

    Args:
        tokens: (R, L) sampled tokens after the start token, padded after the end token.
        eos_id: the end token.

    Returns:
        mask (R, L), True up to and including each caption's end token (all L positions when it has none), and
        ended (R,), True for the captions that wrote an end token within L tokens.
    """
    is_eos = tokens == eos_id  # (R, L)
    ended = is_eos.any(dim=1)
    before_eos = is_eos.long().cumsum(dim=1) - is_eos.long() == 0  # no end token strictly before this position
    return before_eos, ended


def sequence_log_probs(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each caption and the mean entropy of the policy at its positions.

    Args:
        logits: (R, L, V) teacher-forced logits at the positions that predicted `tokens`.
        tokens: (R, L) the sampled tokens.
        mask: (R, L) the positions that count, end token included.

    Returns:
        log P(caption) (R,), summed over the masked positions; and the mean entropy (a scalar, no gradient).
    """
    log_probs = logits.float().log_softmax(dim=-1)  # (R, L, V)
    token_log_probs = log_probs.gather(2, tokens.unsqueeze(2)).squeeze(2)  # (R, L)
    total = token_log_probs.masked_fill(~mask, 0.0).sum(dim=1)  # padding may be a banned token: -inf, not 0 x -inf
    with torch.no_grad():
        p_log_p = log_probs.exp() * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0 where p is 0
        entropy = -(p_log_p.sum(dim=-1) * mask).sum() / mask.sum().clamp(min=1)
    return total, entropy


def self_critical_loss(log_probs: Tensor, rewards: Tensor, baselines: Tensor) -> Tensor:
    """-(reward - baseline) x log P(caption), averaged over the captions.

    Args:
        log_probs: (R,) log-probability of each sampled caption, with gradient.
        rewards: (R,) their rewards.
        baselines: (R,) their baselines.
    """
    advantage = (rewards - baselines).to(log_probs.dtype).detach()
    return -(advantage * log_probs).mean()
