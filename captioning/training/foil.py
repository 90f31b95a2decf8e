"""The foil test: does the model prefer a true caption to the same caption with its position words swapped?

For every reference caption with a position word, its foil swaps them all ("a red circle above a blue square" ->
"a red circle below a blue square", see `position_words`). Both are scored teacher-forced against the image, and
`foil_accuracy` is the share of pairs where the true caption is the more probable (Kamath et al., 2023, "What's
'up' with vision-language models?"). 0.5 is chance: a model that reads names but not places cannot do better.
A pair is left out when either caption has a word outside the vocabulary (an unknown word would decide it) or is
longer than the model reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captioning.model.decoder import TextDecoder
from captioning.model.scoring import score_tokens
from captioning.text.position_words import position_foil
from captioning.text.tokenizer import CaptionTokenizer


class FoilProbe:
    """Builds the foil pairs of a split's references once and scores them batch by batch.

    Args:
        references: reference captions by image id.
        tokenizer: the model's tokenizer.
        max_length: the decoder's length limit in tokens, end token included.
    """

    def __init__(self, references: dict, tokenizer: CaptionTokenizer, max_length: int) -> None:
        self.pad_id = tokenizer.pad_id
        self.pairs: dict = {}  # image id -> (2P, T+1) tokens: P true captions, then their P foils
        for image_id, captions in references.items():
            true = [caption for caption in captions if position_foil(caption)]
            if not true:
                continue
            tokens = tokenizer.encode(true + [position_foil(c) for c in true], max_length=10**6)
            lengths = (tokens != tokenizer.pad_id).sum(dim=1) - 1  # words + end token
            unfair = (tokens == tokenizer.unk_id).any(dim=1) | (lengths > max_length)  # (2P,)
            fair = ~unfair.view(2, -1).any(dim=0)  # (P,): neither the caption nor its foil is unfair
            if fair.any():
                kept = torch.cat([fair, fair])
                self.pairs[image_id] = tokens[kept][:, : max_length + 1]
        self.wins = self.total = 0

    @property
    def num_pairs(self) -> int:
        return sum(len(tokens) // 2 for tokens in self.pairs.values())

    @torch.no_grad()
    def observe(self, decoder: TextDecoder, memory: Tensor, image_ids: list) -> None:
        """Scores the pairs of a batch's images; `memory` (B, M, D) is theirs, in the order of `image_ids`."""
        rows = [(b, self.pairs[i]) for b, i in enumerate(image_ids) if i in self.pairs]
        if not rows:
            return
        width = max(tokens.size(1) for _, tokens in rows)
        tokens = torch.cat([_pad(t, width, self.pad_id) for _, t in rows]).to(memory.device)  # (N, T+1)
        owners = torch.tensor([b for b, t in rows for _ in range(len(t))], device=memory.device)  # (N,)
        log_probs = score_tokens(decoder, memory, tokens, owners, self.pad_id).log_probs  # (N,)
        for image_log_probs in log_probs.split([len(t) for _, t in rows]):
            true, foil = image_log_probs.view(2, -1)  # (P,) each: an image's captions, then their foils
            self.wins += int((true > foil).sum())
            self.total += len(true)

    def result(self) -> tuple[int, int]:
        """(wins, pairs) since the last call; the counts start again."""
        counts, (self.wins, self.total) = (self.wins, self.total), (0, 0)
        return counts


def _pad(tokens: Tensor, width: int, pad_id: int) -> Tensor:
    return torch.nn.functional.pad(tokens, (0, width - tokens.size(1)), value=pad_id)
