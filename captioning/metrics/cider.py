"""CIDEr-D (Vedantam et al., 2015, "CIDEr: Consensus-based image description evaluation"), exactly as
coco-caption's ``Cider`` class computes it under the key "CIDEr": tf-idf vectors of 1..4-grams, document
frequencies over the images of the reference set, clipped cosine similarity, a Gaussian length penalty
with sigma 6 (on coco-caption's length, the number of bigrams), averaged over references and orders, x10.

All candidates are scored at once with NumPy: the join of candidate and reference n-grams is a sorted search.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from captioning.errors import UserError
from captioning.metrics.bleu import run_starts
from captioning.metrics.ngrams import NgramCounts
from captioning.metrics.references import ReferenceSet
from captioning.metrics.words import ENGLISH, check_language, split_captions, split_lines

SIGMA = 6.0


class CiderIdf:
    """Document frequencies (images holding each n-gram) and the idf weights derived from them.

    Args:
        refs: the prepared references; their n-gram ids index the frequencies.
        selected: optional boolean mask over the reference images: count only these (coco-caption counts
            only the images being evaluated).
        extra: count the documents of ``refs``'s extra corpus instead of its images.
    """

    def __init__(self, refs: ReferenceSet, selected: np.ndarray | None = None, extra: bool = False) -> None:
        if extra:
            num_docs = refs.num_extra_docs
        else:
            num_docs = len(refs.image_ids) if selected is None else int(selected.sum())
        self.ref_len = np.log(float(num_docs)) if num_docs else 0.0  # coco-caption's name for log(#documents)
        self.df: list[np.ndarray] = []
        num_images = np.int64(len(refs.image_ids))
        for k in range(refs.n):
            size = refs.index.sizes[k]
            if extra:
                grams = refs.extra_grams[k]  # one per distinct (gram, document)
            else:
                gram_image = refs.gram_image[k]
                distinct = gram_image[run_starts(gram_image)]  # distinct (gram, image)
                if selected is not None:
                    distinct = distinct[selected[distinct % num_images]]
                grams = distinct // num_images
            self.df.append(np.bincount(grams, minlength=size).astype(np.float64))

    def weights(self, k: int, gram: np.ndarray) -> np.ndarray:
        """idf of order-k grams (unseen grams: document frequency 0, counted as 1)."""
        df = self.df[k]
        known = gram < len(df)
        counts = np.zeros(len(gram))
        counts[known] = df[gram[known]]
        return self.ref_len - np.log(np.maximum(1.0, counts))


class CiderDScorer:
    """CIDEr-D of candidates against a prepared reference set (``set_idf`` changes it: not thread-safe).

    Args:
        refs: the prepared references.
        idf: document frequencies to weight n-grams with.
        sigma: standard deviation of the length penalty.
    """

    def __init__(self, refs: ReferenceSet, idf: CiderIdf, sigma: float = SIGMA) -> None:
        self.refs = refs
        self.sigma = sigma
        self.ref_bigrams = np.maximum(refs.ref_lengths - 1, 0)  # coco-caption's "length": number of bigrams
        self.set_idf(idf)

    def set_idf(self, idf: CiderIdf) -> None:
        """Weights the reference vectors with (other) document frequencies."""
        refs = self.refs
        self.idf = idf
        self.ref_vec = []  # per order: tf-idf value of each entry of refs.counts
        self.ref_norm = np.zeros((len(refs.ref_lengths), refs.n))  # (R, n)
        for k, c in enumerate(refs.counts):
            vec = c.count * idf.weights(k, c.gram)
            self.ref_norm[:, k] = np.sqrt(np.bincount(c.sentence, weights=vec**2, minlength=len(refs.ref_lengths)))
            self.ref_vec.append(vec)

    def score(self, cands: list[NgramCounts], cand_image: np.ndarray, cand_lengths: np.ndarray) -> np.ndarray:
        """CIDEr-D of each candidate.

        Args:
            cands: per-order n-gram counts of the candidates (from ``refs.encode``).
            cand_image: position in the reference set of each candidate's image, shape (C,).
            cand_lengths: candidate lengths in tokens, shape (C,).

        Returns:
            Scores, shape (C,).
        """
        refs = self.refs
        num, n, width = len(cand_lengths), refs.n, refs.max_refs
        dots = np.zeros((num, width, n))  # (C, max R, n): clipped tf-idf dot product with each reference
        cand_norm = np.zeros((num, n))
        num_images = np.int64(len(refs.image_ids))
        for k, c in enumerate(cands):
            keys, ref_vec = refs.gram_image[k], self.ref_vec[k]
            size = np.int64(refs.index.sizes[k])
            vec = c.count * self.idf.weights(k, c.gram)
            cand_norm[:, k] = np.sqrt(np.bincount(c.sentence, weights=vec**2, minlength=num))
            known = c.gram < size
            sentence, vec = c.sentence[known], vec[known]
            ckeys = c.gram[known] * num_images + cand_image[sentence]
            lo = np.searchsorted(keys, ckeys, side="left")
            hits = np.searchsorted(keys, ckeys, side="right") - lo  # references of the image holding the n-gram
            entry = np.repeat(np.arange(len(hits)), hits)
            match = lo[entry] + np.arange(len(entry)) - np.repeat(np.cumsum(hits) - hits, hits)
            vr = ref_vec[match]
            contribution = np.minimum(vec[entry], vr) * vr  # coco-caption's clipping
            flat = sentence[entry] * width + refs.ref_slot[refs.counts[k].sentence[match]]
            dots[:, :, k] = np.bincount(flat, weights=contribution, minlength=num * width).reshape(num, width)
        ref_ids = refs.ref_table[cand_image]  # (C, max R)
        present = ref_ids >= 0
        ref_ids = np.where(present, ref_ids, 0)
        ref_norm = self.ref_norm[ref_ids]  # (C, max R, n)
        both = (cand_norm[:, None, :] != 0) & (ref_norm != 0)
        val = np.where(both, dots / np.where(both, cand_norm[:, None, :] * ref_norm, 1.0), dots)
        delta = (np.maximum(cand_lengths - 1, 0)[:, None] - self.ref_bigrams[ref_ids]).astype(np.float64)
        val = val * (np.e ** (-(delta**2) / (2 * self.sigma**2)))[:, :, None]
        val = np.where(present[:, :, None], val, 0.0)
        score = val.sum(axis=1).mean(axis=1) / refs.num_refs[cand_image]
        return score * 10.0


class CiderD:
    """CIDEr-D of batches of candidates against a fixed reference set: the self-critical (SCST) reward.

    The references are tokenized, counted and weighted once; each :meth:`score_batch` call then costs a few
    NumPy operations. Scores are coco-caption's CIDEr-D (pycocoevalcap's "CIDEr") of each candidate alone
    against its image's references, with document frequencies from ``references`` (or from
    ``df_references``, for example the training captions, counted once).

    Args:
        references: ``{image_id: [caption, ...]}`` (PTB-tokenized here), or ``{image_id: [tokens, ...]}``
            with each reference a list of words or token ids (used as they are).
        df_references: optional other ``{image_id: [...]}`` (same form) whose images give the document
            frequencies; default: ``references``.
        sigma: standard deviation of the length penalty.
        end_id: for token-id candidates, a token that ends the caption (it and what follows are ignored).
        id_to_token: for token-id candidates scored against text references: maps an id to its word; the
            decoded caption (words joined by spaces) is then PTB-tokenized like a string candidate.
        language: the word rule of text references and string candidates (`captioning.metrics.words`).
    """

    def __init__(
        self,
        references: Mapping[Hashable, Sequence[str] | Sequence[Sequence[Hashable]]],
        df_references: Mapping[Hashable, Sequence[str] | Sequence[Sequence[Hashable]]] | None = None,
        sigma: float = SIGMA,
        end_id: int | None = None,
        id_to_token: Sequence[str] | Mapping[int, str] | Callable[[int], str] | None = None,
        language: str = ENGLISH,
    ) -> None:
        if not references:
            raise UserError("CiderD needs at least one image with references")
        self.language = check_language(language)
        self.text = _is_text(references)
        self.end_id = end_id
        self.id_to_token = id_to_token
        image_ids = list(references)
        sentences = self._as_tokens(references)
        self._word_tokens = self.text or any(isinstance(t, str) for refs in sentences for r in refs for t in r[:1])
        extra: list[list[Sequence[Hashable]]] = []
        if df_references is not None:
            if _is_text(df_references) != self.text:
                raise TypeError("df_references must have the same form (text or tokens) as references")
            extra = self._as_tokens(df_references)
        self.refs = ReferenceSet(image_ids, sentences, n=4, extra=extra, text=self.text)
        self.scorer = CiderDScorer(self.refs, CiderIdf(self.refs, extra=df_references is not None), sigma)

    def _as_tokens(self, references: Mapping) -> list[list]:
        if self.text:
            tokenized = split_captions(references, self.language)
            return [tokenized[i] for i in references]
        return [[list(ref) for ref in references[i]] for i in references]

    def score_batch(
        self,
        candidates: Sequence[str] | Sequence[Sequence[int]] | Sequence[Sequence[str]],
        image_ids: Sequence[Hashable],
    ) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image.

        Args:
            candidates: captions as strings (PTB-tokenized here, as coco-caption does), as lists of words
                (taken as already tokenized), or as lists of token ids (``end_id`` ends them; against text
                references they are decoded with ``id_to_token``). A (C, T) array or tensor of ids works too.
            image_ids: the image of each candidate; an image may appear several times (several samples).

        Returns:
            Scores, shape (C,), float64.

        Raises:
            ValueError: lengths differ, or an image has no references.
            TypeError: token-id candidates against text references without ``id_to_token``.
        """
        if len(candidates) != len(image_ids):
            raise ValueError(f"{len(candidates)} candidates but {len(image_ids)} image ids")
        if len(candidates) == 0:
            return np.zeros(0)
        try:
            images = self.refs.images_of(list(image_ids))
        except KeyError as err:
            raise UserError(str(err.args[0])) from None
        counts, lengths, _ = self.refs.encode(self._candidate_tokens(candidates))
        return self.scorer.score(counts, images, lengths)

    def _candidate_tokens(self, candidates: Sequence) -> list:
        """Candidates in the references' form: tokenized strings, or token lists."""
        if hasattr(candidates, "tolist"):  # a tensor or array of ids, shape (C, T)
            candidates = candidates.tolist()
        if isinstance(candidates[0], str):
            if not self.text and not self._word_tokens:
                raise TypeError("string candidates need references given as text or as words, not token ids")
            tokenized = split_lines(list(candidates), self.language)
            return tokenized if self.text else [c.split() for c in tokenized]
        out = []
        for cand in candidates:
            cand = cand.tolist() if hasattr(cand, "tolist") else list(cand)
            if self.end_id is not None and self.end_id in cand:
                cand = cand[: cand.index(self.end_id)]
            out.append(cand)
        if not self.text:
            return out
        if all(isinstance(t, str) for c in out for t in c):  # words, already tokenized
            return [" ".join(c) for c in out]
        if self.id_to_token is None:
            raise TypeError("token-id candidates need id_to_token when the references are text")
        lookup = self.id_to_token if callable(self.id_to_token) else self.id_to_token.__getitem__
        # decoded captions, PTB-tokenized like the references (as coco-caption would see them)
        return split_lines([" ".join(t if isinstance(t, str) else lookup(t) for t in c) for c in out], self.language)


def _is_text(references: Mapping) -> bool:
    """Whether references hold caption strings (rather than token lists)."""
    for refs in references.values():
        if isinstance(refs, str) or len(refs) == 0:
            raise UserError("each image needs a non-empty list of references")
        return isinstance(refs[0], str)
    return True
