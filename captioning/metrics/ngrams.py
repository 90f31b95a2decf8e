"""Vectorised n-gram counting shared by BLEU and CIDEr-D.

Sentences become flat int arrays and every k-gram gets a dense integer id, so that counting, clipping and
the tf-idf dot products of BLEU (Papineni et al., 2002) and CIDEr (Vedantam et al., 2015) are NumPy sorts
and searches instead of Python dictionaries of tuples.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

_WIDTH = np.int64(1 << 31)  # wide code of any k-gram: (id of its (k-1)-gram prefix) * _WIDTH + its last token


class Vocab:
    """Maps tokens (words or integer ids) to dense ids, growing on demand."""

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}

    def encode(self, sentences: Sequence[Sequence[Hashable]]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes sentences into one flat id array.

        Args:
            sentences: token sequences.

        Returns:
            ``(tokens, lengths)``: int64 arrays of shape (sum of lengths,) and (S,).
        """
        ids = self.ids
        flat = list(itertools.chain.from_iterable(sentences))
        new = set(flat).difference(ids)
        if new:
            ids.update(zip(new, range(len(ids), len(ids) + len(new)), strict=False))
        tokens = np.fromiter(map(ids.__getitem__, flat), dtype=np.int64, count=len(flat))
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        return tokens, lengths

    def encode_text(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes tokenized captions (tokens separated by white space), as ``encode`` of their ``split()``."""
        if not texts:
            return self.encode([])
        tokens, _ = self.encode([" ".join(texts).split()])
        # single spaces between tokens: count them; the few other texts are split
        lengths = np.fromiter(map(str.count, texts, itertools.repeat(" ")), dtype=np.int64, count=len(texts)) + 1
        for i in odd_texts(texts):
            lengths[i] = len(texts[i].split())
        return tokens, lengths


_OTHER_WHITESPACE = re.compile("[\t\x0b\x0c\r\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def odd_texts(texts: Sequence[str]) -> list[int]:
    """Indices of the texts that are not tokens joined by single spaces: empty, or with other white space.

    For all other texts, ``split()`` and ``split(" ")`` agree and the token count is the space count plus one.
    """
    joined = "\n".join(texts)
    if joined.count("\n") != len(texts) - 1:  # newlines inside texts: check each one
        return [i for i, t in enumerate(texts) if not t or t.split() != t.split(" ")]
    positions = [m.start() for m in _OTHER_WHITESPACE.finditer(joined)]
    for pattern, shift in (("  ", 0), (" \n", 0), ("\n ", 1)):
        start = joined.find(pattern)
        while start >= 0:
            positions.append(start + shift)
            start = joined.find(pattern, start + 1)
    if joined.startswith(" ") or joined.endswith(" "):
        positions += [0, len(joined) - 1]
    odd = {i for i, text in enumerate(texts) if not text} if "" in texts else set()
    if positions:
        offsets = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
        odd.update(bisect.bisect_right(offsets, p) - 1 for p in positions)
    return sorted(odd)


@dataclass
class NgramCounts:
    """Distinct k-grams of each sentence for one order k: parallel arrays of equal length.

    Attributes:
        sentence: index of the sentence holding the k-gram.
        gram: dense k-gram id; ids below the index's size for order k are shared with the indexed corpus,
            larger ids are k-grams unseen there (distinct within one call only).
        count: how often the k-gram occurs in the sentence.
    """

    sentence: np.ndarray
    gram: np.ndarray
    count: np.ndarray


def positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sentence index of every token position, and the number of tokens from there to the sentence end."""
    sentence = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return sentence, ends[sentence] - np.arange(total, dtype=np.int64)


def _codes(tokens: np.ndarray, prefix: np.ndarray | None, k: int, width: np.int64) -> np.ndarray:
    """Code of the k-gram starting at every position: ``prefix id * width + the token at p + k - 1``."""
    if k == 1:
        return tokens
    last = np.zeros_like(tokens)
    if len(tokens) >= k:
        last[: len(tokens) - (k - 1)] = tokens[k - 1 :]
    return prefix * width + last


def unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and their counts (NumPy's sort-based path, faster than its hash path here)."""
    return np.unique(keys, return_counts=True)


class NgramIndex:
    """Dense ids for the 1..n-grams of a fixed corpus; k-grams unseen there get temporary ids per call.

    A k-gram's id is the rank of its code ``(id of its (k-1)-gram prefix) * vocab_size + last token`` among
    the corpus's codes. With ``group`` (say, image and reference slot of each sentence), the same sort also
    counts each k-gram per group.

    Args:
        tokens: flat token ids of the corpus (from :class:`Vocab`).
        lengths: sentence lengths.
        n: highest order.
        group: optional group of each sentence, in ``[0, num_groups)``.
        num_groups: number of groups.

    Attributes:
        tables: per order, the sorted codes of the corpus's distinct k-grams.
        grouped: per order (with ``group``), ``(gram, group, count)`` arrays sorted by gram, then group.
    """

    def __init__(
        self, tokens: np.ndarray, lengths: np.ndarray, n: int = 4, group: np.ndarray | None = None, num_groups: int = 1
    ) -> None:
        self.n = n
        self.vocab_size = int(tokens.max()) + 1 if len(tokens) else 0
        self.tables: list[np.ndarray] = []
        self.grouped: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        sentence, remaining = positions(lengths)
        groups = np.int64(max(num_groups, 1))
        prefix = None
        for k in range(1, n + 1):
            valid = remaining >= k
            code = _codes(tokens, prefix, k, np.int64(self.vocab_size))[valid]
            if k == 1 and group is not None and len(code) and np.bincount(code).all():
                # the ids of a fresh Vocab are already dense: only the counts per group need a sort
                table, gram_of_position = np.arange(self.vocab_size, dtype=np.int64), code
                keys, counts = unique_counts(code * groups + group[sentence])
                self.grouped.append((keys // groups, keys % groups, counts))
            elif group is None:
                table, gram_of_position = np.unique(code, return_inverse=True)
            elif (int(code.max()) + 1 if len(code) else 0) * int(groups) < 2**62:
                # one sort gives both the k-gram ids and their counts per group
                keys, inverse, counts = np.unique(
                    code * groups + group[sentence[valid]], return_inverse=True, return_counts=True
                )
                key_code = keys // groups
                new = np.r_[True, key_code[1:] != key_code[:-1]] if len(keys) else np.zeros(0, dtype=bool)
                gram = np.cumsum(new) - 1
                table, gram_of_position = key_code[new], gram[inverse]
                self.grouped.append((gram, keys % groups, counts))
            else:  # codes too large to pack with groups: two sorts
                table, gram_of_position = np.unique(code, return_inverse=True)
                keys, counts = unique_counts(gram_of_position * groups + group[sentence[valid]])
                self.grouped.append((keys // groups, keys % groups, counts))
            self.tables.append(table)
            prefix = np.full(len(tokens), -1, dtype=np.int64)
            prefix[valid] = gram_of_position

    @property
    def sizes(self) -> list[int]:
        """Number of distinct k-grams in the corpus, k = 1..n."""
        return [len(t) for t in self.tables]

    def count(self, tokens: np.ndarray, lengths: np.ndarray) -> list[NgramCounts]:
        """Counts the distinct k-grams of each of some new sentences, k = 1..n.

        Args:
            tokens: flat token ids (same :class:`Vocab` as the corpus; it may have grown since).
            lengths: sentence lengths, shape (S,).

        Returns:
            One :class:`NgramCounts` per order, sorted by gram then sentence.
        """
        sentence, remaining = positions(lengths)
        vocab_size = np.int64(self.vocab_size)
        out = []
        prefix = None
        previous_size = 0
        for k, table in enumerate(self.tables, start=1):
            valid = remaining >= k
            # exact identity of every k-gram, seen or not: prefix id (temporary ones too) and last token
            wide, inverse = np.unique(_codes(tokens, prefix, k, _WIDTH)[valid], return_inverse=True)
            head, last = (wide // _WIDTH, wide % _WIDTH) if k > 1 else (np.zeros_like(wide), wide)
            maybe = (last < vocab_size) & (head < previous_size if k > 1 else True)
            code = np.where(maybe, head * vocab_size + last, -1)
            ids = np.minimum(np.searchsorted(table, code), max(len(table) - 1, 0))
            known = maybe & (table[ids] == code) if len(table) else np.zeros(len(code), dtype=bool)
            ids[~known] = len(table) + np.arange(int((~known).sum()))  # unseen k-grams: ids after the table's
            ids = ids[inverse]
            prefix = np.full(len(tokens), -1, dtype=np.int64)
            prefix[valid] = ids
            previous_size = len(table)
            num = np.int64(max(len(lengths), 1))
            keys, counts = unique_counts(ids * num + sentence[valid])  # by gram: later searches get sorted queries
            out.append(NgramCounts(keys % num, keys // num, counts))
        return out
