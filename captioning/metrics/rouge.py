"""ROUGE-L as coco-caption computes it (Lin, 2004, "ROUGE: a package for automatic evaluation of
summaries"): the longest common subsequence with every reference, F-measure of the best precision and the
best recall with beta = 1.2, averaged over images. The LCS lengths of all candidate-reference pairs are
computed at once with the bit-parallel algorithm of Hyyro (2004) on 64-bit words.
"""

from __future__ import annotations

import numpy as np

BETA = 1.2
_WORD = 64


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    bytes_ = x.view(np.uint8).reshape(*x.shape, 8)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[bytes_].sum(-1)


def _lcs_python(a: list[int], b: list[int]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def lcs_lengths(
    tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Length of the longest common subsequence of sentence pairs.

    Args:
        tokens: flat token ids of all sentences.
        starts: offset of each sentence in ``tokens``.
        lengths: length of each sentence.
        first: sentence index of the first member of each pair, shape (P,).
        second: sentence index of the second member of each pair, shape (P,).

    Returns:
        LCS lengths, shape (P,).
    """
    # one member of each pair goes into the bits of a 64-bit word, the other one is scanned token by token
    swap = (lengths[first] > _WORD) & (lengths[second] <= _WORD)
    bits_side, scan_side = np.where(swap, second, first), np.where(swap, first, second)
    out = np.zeros(len(first), dtype=np.int64)
    fits = lengths[bits_side] <= _WORD
    for p in np.flatnonzero(~fits):  # both longer than 64 tokens: rare, plain dynamic programming
        a, b = bits_side[p], scan_side[p]
        out[p] = _lcs_python(
            tokens[starts[a] : starts[a] + lengths[a]].tolist(), tokens[starts[b] : starts[b] + lengths[b]].tolist()
        )
    pairs = np.flatnonzero(fits)
    pairs = pairs[np.argsort(-lengths[scan_side[pairs]], kind="stable")]  # longest scans first
    if len(pairs) == 0:
        return out
    a, b = bits_side[pairs], scan_side[pairs]
    vocab = np.int64(int(tokens.max()) + 1 if len(tokens) else 1)
    # match mask of (bits sentence, token): the bits where the token occurs in the sentence
    sentences = np.unique(a)
    length_a = lengths[sentences]
    row = np.repeat(np.arange(len(sentences)), length_a)
    column = np.arange(int(length_a.sum())) - np.repeat(np.cumsum(length_a) - length_a, length_a)
    keys = row * vocab + tokens[starts[sentences][row] + column]
    order = np.argsort(keys, kind="stable")
    keys, bits = keys[order], np.left_shift(np.uint64(1), column[order].astype(np.uint64))
    first_of_run = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    table_keys, table_masks = keys[first_of_run], np.bitwise_or.reduceat(bits, first_of_run)
    # masks of every scanned token, laid out (P, longest scan)
    length_b = lengths[b]
    pair = np.repeat(np.arange(len(pairs)), length_b)
    j = np.arange(int(length_b.sum())) - np.repeat(np.cumsum(length_b) - length_b, length_b)
    query = np.searchsorted(sentences, a)[pair] * vocab + tokens[starts[b][pair] + j]
    masks = np.zeros((len(pairs), int(length_b[0])), dtype=np.uint64)  # (P, Lb)
    if len(table_keys):
        hit = np.minimum(np.searchsorted(table_keys, query), len(table_keys) - 1)
        masks[pair, j] = np.where(table_keys[hit] == query, table_masks[hit], np.uint64(0))
    active = np.searchsorted(-length_b, -np.arange(int(length_b[0])), side="left")  # pairs still scanning at j
    v = np.full(len(pairs), np.iinfo(np.uint64).max, dtype=np.uint64)
    for step, count in enumerate(active):
        u = v[:count] & masks[:count, step]
        v[:count] = (v[:count] + u) | (v[:count] - u)
    low = np.where(
        lengths[a] >= _WORD,
        np.iinfo(np.uint64).max,
        (np.uint64(1) << np.minimum(lengths[a], _WORD - 1).astype(np.uint64)) - np.uint64(1),
    ).astype(np.uint64)
    out[pairs] = _popcount(~v & low)  # the LCS length is the number of zero bits
    return out


def rouge_l(
    lcs: np.ndarray, cand_lengths: np.ndarray, ref_lengths: np.ndarray, pair_cand: np.ndarray, num_cands: int
) -> np.ndarray:
    """Per-candidate ROUGE-L from the LCS of each candidate-reference pair.

    Args:
        lcs: LCS length of each pair, shape (P,).
        cand_lengths: candidate length of each pair, shape (P,).
        ref_lengths: reference length of each pair, shape (P,).
        pair_cand: candidate index of each pair, shape (P,).
        num_cands: number of candidates C.

    Returns:
        ROUGE-L of each candidate, shape (C,).
    """
    prec = np.zeros(num_cands)
    rec = np.zeros(num_cands)
    np.maximum.at(prec, pair_cand, lcs / cand_lengths)
    np.maximum.at(rec, pair_cand, lcs / ref_lengths)
    ok = (prec != 0) & (rec != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = ((1 + BETA**2) * prec * rec) / (rec + BETA**2 * prec)
    return np.where(ok, score, 0.0)
