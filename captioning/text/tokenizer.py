"""A word-level caption tokenizer trained on the training captions with the `tokenizers` library.

Its words are the words that the metrics count, by the word rule of the captions' language
(`captioning.metrics.words`): for English the PTB tokens of coco-caption (lower-cased, punctuation dropped, "there's"
-> "there 's"), for Chinese jieba's words. So the model writes the words it is scored on. Words seen fewer than
`min_frequency` times map to the unknown token (the usual COCO preprocessing since Karpathy & Fei-Fei, 2015).
Saved inside every checkpoint, with its language.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from captioning.errors import UserError
from captioning.metrics.words import ENGLISH, check_language, join_words, split_lines

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
UNK_WORD = "<unk>"  # the unknown token in text: PTB tokenization keeps it as one word
# PTB tokenization writes brackets as these words but would split the words themselves ("-lrb-" -> "lrb"):
# decoded text shows the bracket, which tokenizes back to the word
_LANGUAGE = "captioning_language"  # the key that wraps a non-English tokenizer's JSON with its language
if TYPE_CHECKING:  # torch only where tensors are made: onnxruntime users decode words without it
    from torch import Tensor

_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


class CaptionTokenizer:
    """Maps captions to token ids framed by start and end tokens, and back, in one language ("en", "zh", ...)."""

    def __init__(self, tokenizer: Tokenizer, language: str = ENGLISH) -> None:
        self.tokenizer, self.language = tokenizer, check_language(language)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (tokenizer.token_to_id(t) for t in (PAD, BOS, EOS, UNK))
        if None in (self.pad_id, self.bos_id, self.eos_id, self.unk_id):
            raise UserError(f"tokenizer lacks one of the special tokens {PAD} {BOS} {EOS} {UNK}")
        # Tokenizers saved before PTB words have a normalizer that lower-cases and turns punctuation into spaces:
        # they keep reading raw captions through it, as they were trained
        self.ptb = tokenizer.normalizer is None
        words = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        self._words = [UNK_WORD if w == UNK else _BRACKETS.get(w, w) for w in words]

    @classmethod
    def train(cls, captions: Iterable[str], min_frequency: int = 5, language: str = ENGLISH) -> CaptionTokenizer:
        """Builds the vocabulary from `captions`: every word of `language` seen at least `min_frequency` times."""
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")  # a PTB word may hold a no-break space
        trainer = trainers.WordLevelTrainer(min_frequency=min_frequency, special_tokens=[PAD, BOS, EOS, UNK])
        tokenizer.train_from_iterator(split_lines(list(captions), language), trainer=trainer)
        return cls(tokenizer, language)

    @classmethod
    def from_json(cls, text: str) -> CaptionTokenizer:
        """Reads `to_json`: the `tokenizers` JSON, wrapped with its language when that is not English."""
        data = json.loads(text)
        if _LANGUAGE in data:
            return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), data[_LANGUAGE])
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        """The `tokenizers` JSON (English, as always), or {"captioning_language": ..., "tokenizer": that JSON}: the
        `tokenizers` library rejects keys of its own format that it does not know."""
        text = self.tokenizer.to_str()
        if self.language == ENGLISH:
            return text
        return json.dumps({_LANGUAGE: self.language, "tokenizer": json.loads(text)}, ensure_ascii=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, captions: Sequence[str], max_length: int) -> Tensor:
        """Captions -> (N, T) ids `[BOS] w1 .. wn [EOS]`, cut to `max_length + 1` tokens and padded.

        The decoder reads the first T-1 tokens and predicts the last T-1, so `max_length` is both the number of
        positions it sees and the number of tokens (end token included) that it writes.
        """
        lines = split_lines(captions, self.language) if self.ptb else captions
        rows = [[self.bos_id, *e.ids[: max_length - 1], self.eos_id] for e in self.tokenizer.encode_batch(lines)]
        width = max(len(row) for row in rows)
        import torch

        return torch.tensor([row + [self.pad_id] * (width - len(row)) for row in rows], dtype=torch.long)

    def id_to_word(self, token: int) -> str:
        """The word of a token id as decoded text writes it: the unknown token as `<unk>`, PTB brackets as brackets."""
        return self._words[token]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Token ids -> caption: words joined as the language writes them (by spaces; without in Chinese and
        Japanese), stopping at the end token, without padding and start tokens.

        The language's word rule gives the caption's words back, so it scores as the model wrote it.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # a tensor or an array
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return join_words((self._words[i] for i in ids if i != self.pad_id and i != self.bos_id), self.language)

    def decode_batch(self, rows: Tensor) -> list[str]:
        return [self.decode(row) for row in rows]
