"""A reference set prepared once: tokens encoded, n-grams indexed and counted, references laid out per image.

Both :class:`~captioning.metrics.CaptionScorer` (validation every epoch) and
:class:`~captioning.metrics.CiderD` (the SCST reward every step) keep one of these, so that references are
never tokenized or counted again. Reference n-grams are kept sorted by (n-gram, image): BLEU's clipping
counts, CIDEr-D's document frequencies and CIDEr-D's candidate-reference join all read that one order.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from captioning.metrics.ngrams import NgramCounts, NgramIndex, Vocab


class ReferenceSet:
    """References of a set of images, encoded and counted.

    Args:
        image_ids: the images, in order.
        sentences: for each image, its reference sentences as token sequences (at least one each).
        n: highest n-gram order.
        extra: more documents (lists of token sequences) whose n-grams share ids with the references, for
            CIDEr-D document frequencies counted on another corpus.
        text: sentences (and extra ones) are tokenized strings, split on white space, not token sequences.

    Attributes:
        counts: per order, the references' k-gram counts, sorted by (gram, image, reference).
        gram_image: per order, ``gram * num_images + image`` of each entry of ``counts`` (non-decreasing).
        ref_table: (I, max R) reference index of each image's references, -1 where the image has fewer.
        length_table: (I, max R) reference lengths, -1 where the image has fewer references.
    """

    def __init__(
        self,
        image_ids: Sequence[Hashable],
        sentences: Sequence[Sequence[Sequence[Hashable]]],
        n: int = 4,
        extra: Sequence[Sequence[Sequence[Hashable]]] = (),
        text: bool = False,
    ) -> None:
        self.image_ids = list(image_ids)
        self.position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.n = n
        self.vocab = Vocab()
        flat = [s for refs in sentences for s in refs]
        self.num_refs = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))  # (I,)
        self.ref_image = np.repeat(np.arange(len(sentences), dtype=np.int64), self.num_refs)  # (R,)
        self.ref_slot = (
            np.arange(len(flat), dtype=np.int64) - (np.cumsum(self.num_refs) - self.num_refs)[self.ref_image]
        )
        self.max_refs = max(int(self.num_refs.max()) if len(self.num_refs) else 0, 1)
        self.ref_table = np.full((len(sentences), self.max_refs), -1, dtype=np.int64)  # (I, max R)
        self.ref_table[self.ref_image, self.ref_slot] = np.arange(len(flat))
        self.text = text
        tokens, self.ref_lengths = self._encode(flat)
        self.tokens = tokens  # flat token ids of all references
        self.length_table = np.full(self.ref_table.shape, -1, dtype=np.int64)
        self.length_table[self.ref_image, self.ref_slot] = self.ref_lengths

        extra_flat = [s for doc in extra for s in doc]
        extra_tokens, extra_lengths = self._encode(extra_flat)
        extra_doc = np.repeat(np.arange(len(extra), dtype=np.int64), [len(doc) for doc in extra])
        self.num_extra_docs = len(extra)
        # one group per reference (image, slot), then one per extra document
        num_images, width = len(sentences), self.max_refs
        ref_groups = num_images * width
        group = np.concatenate([self.ref_image * width + self.ref_slot, ref_groups + extra_doc])
        self.index = NgramIndex(
            np.concatenate([tokens, extra_tokens]),
            np.concatenate([self.ref_lengths, extra_lengths]),
            n,
            group=group,
            num_groups=ref_groups + len(extra),
        )
        self.counts: list[NgramCounts] = []
        self.gram_image: list[np.ndarray] = []
        self.extra_grams: list[np.ndarray] = []  # per order, the gram of each distinct (gram, extra document)
        for gram, grp, count in self.index.grouped:
            is_ref = grp < ref_groups
            gram_ref, grp_ref = gram[is_ref], grp[is_ref]
            image = grp_ref // width
            self.counts.append(NgramCounts(self.ref_table[image, grp_ref % width], gram_ref, count[is_ref]))
            self.gram_image.append(gram_ref * np.int64(num_images) + image)
            self.extra_grams.append(gram[~is_ref])

    def encode(self, sentences: Sequence) -> tuple[list[NgramCounts], np.ndarray, np.ndarray]:
        """Counts the n-grams of new sentences (candidates, in the references' form) with ids shared with them.

        Returns:
            ``(counts, lengths, tokens)``: one :class:`NgramCounts` per order, the sentence lengths (S,), and
            the flat token ids.
        """
        tokens, lengths = self._encode(sentences)
        return self.index.count(tokens, lengths), lengths, tokens

    def _encode(self, sentences: Sequence) -> tuple[np.ndarray, np.ndarray]:
        return self.vocab.encode_text(sentences) if self.text else self.vocab.encode(sentences)

    def images_of(self, image_ids: Sequence[Hashable]) -> np.ndarray:
        """Positions of image ids in this set.

        Raises:
            KeyError: an image id that has no references here.
        """
        try:
            return np.fromiter((self.position[i] for i in image_ids), dtype=np.int64, count=len(image_ids))
        except KeyError as err:
            raise KeyError(f"image id {err.args[0]!r} has no references") from None
