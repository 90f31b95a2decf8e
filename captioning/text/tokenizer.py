"""A word-level caption tokenizer trained on the training captions with the `tokenizers` library.

Lower-cased, punctuation dropped, words seen fewer than `min_frequency` times mapped to the unknown token
(the usual preprocessing of COCO captioning since Karpathy & Fei-Fei, 2015). Saved inside every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"


class CaptionTokenizer:
    """Maps captions to token ids framed by start and end tokens, and back."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (tokenizer.token_to_id(t) for t in (PAD, BOS, EOS, UNK))
        if None in (self.pad_id, self.bos_id, self.eos_id, self.unk_id):
            raise ValueError(f"tokenizer lacks one of the special tokens {PAD} {BOS} {EOS} {UNK}")

    @classmethod
    def train(cls, captions: Iterable[str], min_frequency: int = 5) -> CaptionTokenizer:
        """Builds the vocabulary from `captions`: every word seen at least `min_frequency` times."""
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
        trainer = trainers.WordLevelTrainer(min_frequency=min_frequency, special_tokens=[PAD, BOS, EOS, UNK])
        tokenizer.train_from_iterator(captions, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> CaptionTokenizer:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, captions: Sequence[str], max_length: int) -> Tensor:
        """Captions -> (N, T) ids `[BOS] w1 .. wn [EOS]`, cut to `max_length + 1` tokens and padded.

        The decoder reads the first T-1 tokens and predicts the last T-1, so `max_length` is both the number of
        positions it sees and the number of tokens (end token included) that it writes.
        """
        rows = [[self.bos_id, *e.ids[: max_length - 1], self.eos_id] for e in self.tokenizer.encode_batch(captions)]
        width = max(len(row) for row in rows)
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        return tokens

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Token ids -> caption, stopping at the end token and leaving out special tokens."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode([i for i in ids if i not in (self.pad_id, self.bos_id)], skip_special_tokens=True)

    def decode_batch(self, rows: Tensor) -> list[str]:
        return [self.decode(row) for row in rows]
