"""``score_captions`` and ``CaptionScorer``: the coco-caption numbers (pycocoevalcap's ``COCOEvalCap``) for
``{image_id: caption}`` against ``{image_id: [reference, ...]}``.

BLEU, ROUGE-L and CIDEr-D run in NumPy on Python PTB tokens; METEOR and SPICE run the official jars when
Java and the jars are present, and are otherwise left out with a one-line warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from captioning.errors import UserError, UserNotice
from captioning.metrics.bleu import bleu_scores, bleu_statistics, max_reference_counts
from captioning.metrics.cider import CiderDScorer, CiderIdf
from captioning.metrics.java import Unavailable
from captioning.metrics.meteor import meteor_scores
from captioning.metrics.ngrams import Vocab, odd_texts
from captioning.metrics.references import ReferenceSet
from captioning.metrics.rouge import lcs_lengths, rouge_l
from captioning.metrics.spice import spice_scores
from captioning.metrics.words import ENGLISH, check_language, split_captions, split_lines


class MetricLeftOut(UserNotice):
    """A metric that cannot run here (no Java, no jar): its message says why and how to enable it, in one line."""


BLEU_KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
FAMILIES = {"BLEU": BLEU_KEYS, "METEOR": ["METEOR"], "ROUGE_L": ["ROUGE_L"], "CIDEr": ["CIDEr"], "SPICE": ["SPICE"]}
_ALIASES = {"bleu": "BLEU", "meteor": "METEOR", "rouge": "ROUGE_L", "rouge_l": "ROUGE_L", "rouge-l": "ROUGE_L"}
_ALIASES.update({"cider": "CIDEr", "cider-d": "CIDEr", "ciderd": "CIDEr", "spice": "SPICE"})
_ALIASES.update({k.lower(): "BLEU" for k in BLEU_KEYS})


def metric_families(metrics: Sequence[str] | None) -> list[str]:
    """Normalises a metric selection (families or keys, any case) to family names in coco-caption's order.

    Raises:
        ValueError: an unknown metric name.
    """
    if metrics is None:
        return list(FAMILIES)
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen = set()
    for name in metrics:
        family = _ALIASES.get(str(name).lower())
        if family is None:
            raise UserError(f"unknown metric {name!r}; choose from {', '.join(FAMILIES)}")
        chosen.add(family)
    return [f for f in FAMILIES if f in chosen]


def _check_references(references: Mapping[Hashable, Sequence[str]]) -> None:
    if not isinstance(references, Mapping):
        raise TypeError("references must be a mapping {image_id: [caption, ...]}")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise UserError(f"image {image_id!r}: references must be a non-empty list of captions")
        if not all(type(ref) is str for ref in refs):
            bad = next(ref for ref in refs if not isinstance(ref, str))
            raise UserError(f"image {image_id!r}: reference {bad!r} is not a string")


def _check_predictions(predictions: Mapping[Hashable, str]) -> dict[Hashable, str]:
    if not isinstance(predictions, Mapping):
        raise TypeError("predictions must be a mapping {image_id: caption}")
    out = {}
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):  # a one-caption list, as pycocoevalcap holds results, is fine
            if isinstance(caption, Sequence) and len(caption) == 1 and isinstance(caption[0], str):
                caption = caption[0]
            else:
                raise UserError(f"image {image_id!r}: the prediction must be one caption string, got {caption!r}")
        out[image_id] = caption
    return out


class CaptionScorer:
    """Scores captions against a fixed reference set, preparing the references once.

    The references are PTB-tokenized, encoded and counted here, and CIDEr-D's document frequencies are
    computed here, so that validation every epoch only processes the predictions. As in coco-caption,
    document frequencies come from the images being scored: when a call scores only part of the reference
    set, they are recomputed for that part (a cheap count over prepared n-grams). One scorer serves one
    thread at a time.

    Args:
        references: ``{image_id: [caption, ...]}``.
        metrics: metric families to compute (default: all; ``["BLEU", "CIDEr"]`` for example).
        meteor_jar: path of meteor-1.5.jar (default: ``$CAPTIONING_METEOR_JAR``, then pycocoevalcap's).
        spice_jar: path of spice-1.0.jar (default: ``$CAPTIONING_SPICE_JAR``, then pycocoevalcap's).
        spice_cache: SPICE's parse cache folder (default: ``$CAPTIONING_SPICE_CACHE``, else none).
        language: the word rule of the captions (`captioning.metrics.words`): "en" (PTB, as coco-caption), "zh"
            (jieba), ... METEOR and SPICE read English only, and are left out with a warning for other languages.
    """

    def __init__(
        self,
        references: Mapping[Hashable, Sequence[str]],
        metrics: Sequence[str] | None = None,
        meteor_jar: str | os.PathLike | None = None,
        spice_jar: str | os.PathLike | None = None,
        spice_cache: str | os.PathLike | None = None,
        language: str = ENGLISH,
    ) -> None:
        _check_references(references)
        self.language = check_language(language)
        self.families = metric_families(metrics)
        english_only = [f for f in ("METEOR", "SPICE") if f in self.families and self.language != ENGLISH]
        if english_only:
            warnings.warn(f"{' and '.join(english_only)} left out: they read English captions only, "
                          f"not language '{self.language}'", MetricLeftOut, stacklevel=2)  # fmt: skip
            self.families = [f for f in self.families if f not in english_only]
        self.meteor_jar, self.spice_jar, self.spice_cache = meteor_jar, spice_jar, spice_cache
        self.tokenized = split_captions(references, self.language)
        self.image_ids = list(self.tokenized)
        self.refs = ReferenceSet(self.image_ids, [self.tokenized[i] for i in self.image_ids], text=True)
        self._bleu_max = max_reference_counts(self.refs)
        self._idf = CiderIdf(self.refs)  # document frequencies of the whole set, computed once
        self._cider = CiderDScorer(self.refs, self._idf)
        flat = [s for i in self.image_ids for s in self.tokenized[i]]
        self._rouge_refs = _rouge_layout(self.refs.vocab, flat, self.refs.tokens, self.refs.ref_lengths)

    def score(self, predictions: Mapping[Hashable, str], per_image: bool = False) -> dict:
        """Scores one caption per image.

        Args:
            predictions: ``{image_id: caption}``; every image must be in the reference set.
            per_image: also return ``"per_image": {image_id: {metric_key: score}}``.

        Returns:
            ``{"Bleu_1": ..., "Bleu_4": ..., "METEOR": ..., "ROUGE_L": ..., "CIDEr": ..., "SPICE": ...}`` for
            the selected metrics that can run here (floats).

        Raises:
            ValueError: an image without references, a prediction that is not one string, or no predictions.
        """
        predictions = _check_predictions(predictions)
        if not predictions:
            raise UserError("no predictions to score")
        image_ids = list(predictions)
        try:
            images = self.refs.images_of(image_ids)
        except KeyError as err:
            raise UserError(str(err.args[0])) from None
        cands = split_lines([predictions[i] for i in image_ids], self.language)
        overall: dict[str, float] = {}
        table: dict[str, np.ndarray | list[float]] = {}
        counts, lengths, tokens = self.refs.encode(cands)
        if "BLEU" in self.families:
            stats = bleu_statistics(counts, images, lengths, self._bleu_max, self.refs.length_table)
            corpus, each = bleu_scores(stats)
            for k, key in enumerate(BLEU_KEYS):
                overall[key], table[key] = float(corpus[k]), each[:, k]
        if "METEOR" in self.families:
            self._run_jar(
                "METEOR", overall, table, lambda: meteor_scores(cands, self._refs_of(images), self.meteor_jar)
            )
        if "ROUGE_L" in self.families:
            table["ROUGE_L"] = self._rouge(cands, images, tokens, lengths)
            overall["ROUGE_L"] = float(np.mean(table["ROUGE_L"]))
        if "CIDEr" in self.families:
            table["CIDEr"] = self._cider_scores(counts, images, lengths)
            overall["CIDEr"] = float(np.mean(table["CIDEr"]))
        if "SPICE" in self.families:
            self._run_jar(
                "SPICE",
                overall,
                table,
                lambda: spice_scores(image_ids, cands, self._refs_of(images), self.spice_jar, self.spice_cache),
            )
        result: dict = dict(overall)
        if per_image:
            result["per_image"] = {
                image_id: {key: float(values[j]) for key, values in table.items()}
                for j, image_id in enumerate(image_ids)
            }
        return result

    def _refs_of(self, images: np.ndarray) -> list[list[str]]:
        return [self.tokenized[self.image_ids[p]] for p in images]

    @staticmethod
    def _run_jar(key: str, overall: dict, table: dict, run) -> None:
        try:
            overall[key], table[key] = run()
        except Unavailable as err:
            warnings.warn(f"{key} left out: {err}", MetricLeftOut, stacklevel=3)

    def _cider_scores(self, counts, images: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if len(np.unique(images)) == len(self.image_ids):
            return self._cider.score(counts, images, lengths)
        selected = np.zeros(len(self.image_ids), dtype=bool)
        selected[images] = True
        self._cider.set_idf(CiderIdf(self.refs, selected=selected))  # coco-caption: only the scored images count
        try:
            return self._cider.score(counts, images, lengths)
        finally:
            self._cider.set_idf(self._idf)

    def _rouge(self, cands: list[str], images: np.ndarray, cand_tokens: np.ndarray, cand_lengths: np.ndarray):
        ref_tokens, ref_starts, ref_lengths = self._rouge_refs
        cand_tokens, cand_starts, cand_lengths = _rouge_layout(self.refs.vocab, cands, cand_tokens, cand_lengths)
        tokens = np.concatenate([ref_tokens, cand_tokens])
        starts = np.concatenate([ref_starts, cand_starts + len(ref_tokens)])
        lengths = np.concatenate([ref_lengths, cand_lengths])
        ref_ids = self.refs.ref_table[images]  # (C, max R)
        pair_cand, slot = np.nonzero(ref_ids >= 0)
        pair_ref = ref_ids[pair_cand, slot]
        first = len(ref_lengths) + pair_cand
        lcs = lcs_lengths(tokens, starts, lengths, first, pair_ref)
        return rouge_l(lcs, lengths[first], lengths[pair_ref], pair_cand, len(cands))


def _rouge_layout(
    vocab: Vocab, texts: list[str], tokens: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of each caption as ROUGE-L reads them: coco-caption's ``split(" ")``, not ``split()``.

    The two agree except for an empty caption (one empty token) or a token holding other white space (a
    fraction's no-break space); those few are encoded again and appended, and their starts point there.

    Returns:
        ``(tokens, starts, lengths)``: flat ids, and the offset and length of each caption in them.
    """
    starts = np.cumsum(lengths) - lengths
    odd = odd_texts(texts)
    if not odd:
        return tokens, starts, lengths
    extra, extra_lengths = vocab.encode([texts[i].split(" ") for i in odd])
    starts, lengths = starts.copy(), lengths.copy()
    starts[odd] = len(tokens) + np.cumsum(extra_lengths) - extra_lengths
    lengths[odd] = extra_lengths
    return np.concatenate([tokens, extra]), starts, lengths


def score_captions(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    metrics: Sequence[str] | None = None,
    per_image: bool = False,
    language: str = ENGLISH,
) -> dict:
    """The coco-caption scores of one caption per image, as pycocoevalcap's ``COCOEvalCap`` computes them.

    The images scored are those of ``predictions`` (as coco-caption scores the images of the results);
    references of other images are ignored, CIDEr-D's document frequencies included.

    Args:
        predictions: ``{image_id: caption}``.
        references: ``{image_id: [caption, ...]}``, covering every predicted image.
        metrics: metric families (default: all of BLEU, METEOR, ROUGE_L, CIDEr, SPICE).
        per_image: also return ``"per_image": {image_id: {metric_key: score}}``.
        language: the captions' word rule (see `CaptionScorer`).

    Returns:
        ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE": float}``; a metric that cannot run
        here is left out with a warning that says why and how to enable it.
    """
    predictions = _check_predictions(predictions)
    if not isinstance(references, Mapping):
        raise TypeError("references must be a mapping {image_id: [caption, ...]}")
    missing = [i for i in predictions if i not in references]
    if missing:
        raise UserError(f"image id {missing[0]!r} has no references ({len(missing)} such images)")
    subset = {i: references[i] for i in predictions}  # in the results' order, as pycocoevalcap tokenizes them
    return CaptionScorer(subset, metrics, language=language).score(predictions, per_image=per_image)
