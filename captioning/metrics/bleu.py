"""BLEU-1..4 as coco-caption computes it (Papineni et al., 2002, "BLEU: a method for automatic evaluation
of machine translation"): corpus-level clipped n-gram precisions, brevity penalty from the "closest"
reference length, and coco-caption's per-image scores with its 1e-9 / 1e-15 smoothing constants.
"""

from __future__ import annotations

import numpy as np

from captioning.metrics.ngrams import NgramCounts
from captioning.metrics.references import ReferenceSet

_SMALL = 1e-9
_TINY = 1e-15


def run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def max_reference_counts(refs: ReferenceSet) -> list[tuple[np.ndarray, np.ndarray, np.int64]]:
    """For every (k-gram, image) of the references, the highest count in any one reference of the image.

    Returns:
        Per order, ``(keys, max_count, size)`` with sorted keys ``gram * num_images + image`` and ``size`` the
        number of distinct k-grams of the references.
    """
    out = []
    for k, (counts, gram_image) in enumerate(zip(refs.counts, refs.gram_image, strict=True)):
        starts = run_starts(gram_image)
        maxima = np.maximum.reduceat(counts.count, starts) if len(starts) else counts.count[:0]
        out.append((gram_image[starts], maxima, np.int64(refs.index.sizes[k])))
    return out


def bleu_statistics(
    cands: list[NgramCounts],
    cand_image: np.ndarray,
    cand_lengths: np.ndarray,
    ref_max: list[tuple[np.ndarray, np.ndarray, np.int64]],
    ref_length_table: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-candidate BLEU sufficient statistics.

    Args:
        cands: k-gram counts of the candidates, one entry per order.
        cand_image: image index of each candidate, shape (C,).
        cand_lengths: candidate lengths in tokens, shape (C,).
        ref_max: output of :func:`max_reference_counts`.
        ref_length_table: reference lengths of each image, shape (I, max references), padded with -1.

    Returns:
        ``correct`` and ``guess`` of shape (C, n), ``testlen`` and ``reflen`` of shape (C,).
    """
    n = len(cands)
    num = len(cand_lengths)
    num_images = np.int64(len(ref_length_table))
    correct = np.zeros((num, n), dtype=np.int64)
    for k, (counts, (keys, maxima, size)) in enumerate(zip(cands, ref_max, strict=False)):
        valid = counts.gram < size
        ckeys = np.where(valid, counts.gram, 0) * num_images + cand_image[counts.sentence]
        if len(keys) == 0:
            continue
        pos = np.minimum(np.searchsorted(keys, ckeys), len(keys) - 1)
        hit = valid & (keys[pos] == ckeys)
        clipped = np.where(hit, np.minimum(counts.count, maxima[pos]), 0)
        correct[:, k] = np.bincount(counts.sentence, weights=clipped, minlength=num).astype(np.int64)
    guess = np.maximum(0, cand_lengths[:, None] - np.arange(n)[None, :])
    # "closest" reference length, ties to the shorter one: the minimum of (|l - testlen|, l)
    lens = ref_length_table[cand_image]  # (C, R)
    key = np.abs(lens - cand_lengths[:, None]) * (1 << 32) + lens
    key[lens < 0] = np.iinfo(np.int64).max
    reflen = np.take_along_axis(lens, key.argmin(axis=1)[:, None], axis=1)[:, 0]
    return {"correct": correct, "guess": guess, "testlen": cand_lengths, "reflen": reflen}


def _bleu_from_totals(correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray) -> np.ndarray:
    """coco-caption's formula, applied row-wise to arrays of shape (..., n) and (...)."""
    n = correct.shape[-1]
    # the running product over k, in the same order of multiplications as coco-caption
    running = np.cumprod((correct + _TINY) / (guess + _SMALL), axis=-1)
    bleu = running ** (1.0 / np.arange(1, n + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleu * penalty[..., None]


def bleu_scores(stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Corpus BLEU-1..n and per-candidate BLEU-1..n from :func:`bleu_statistics`.

    Returns:
        ``(corpus, per_candidate)`` of shape (n,) and (C, n).
    """
    per_candidate = _bleu_from_totals(stats["correct"], stats["guess"], stats["testlen"], stats["reflen"])
    corpus = _bleu_from_totals(
        stats["correct"].sum(0),
        stats["guess"].sum(0),
        np.asarray(stats["testlen"].sum()),
        np.asarray(stats["reflen"].sum()),
    )
    return corpus, per_candidate
