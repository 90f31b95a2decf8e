"""What a split's captions say about the model beyond their scores: how varied they are, and whether it has collapsed.

"The model writes the same caption for every image" is a common failure (a learning rate too high, too few steps, a
preprocessing bug that hides the images), and nothing in BLEU or CIDEr-D names it. These numbers do, at every
validation and test, in metrics.json and the curves.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from captioning.metrics.words import split_lines
from captioning.text.tokenizer import CaptionTokenizer

COLLAPSED_BELOW = 0.2  # share of distinct captions under which the model writes the same caption for most images
SPECIAL_TOKENS = 4  # padding, start, end, unknown


def caption_diagnostics(
    captions: Mapping, tokenizer: CaptionTokenizer, training_captions: Collection[str] | None = None
) -> dict[str, float]:
    """{"distinct_captions": share of captions that differ from each other, "vocabulary_used": share of the
    vocabulary's words that some caption uses, "mean_length": words per caption, "novel_captions": share of captions
    that are no training caption verbatim (only when `training_captions`, given as `split_lines` writes them)}."""
    if not captions:
        return {}
    lines = split_lines(list(captions.values()), tokenizer.language)
    used = {word for line in lines for word in line.split()}
    vocabulary = {tokenizer.id_to_word(i) for i in range(SPECIAL_TOKENS, tokenizer.vocab_size)}
    scores = {
        "distinct_captions": len(set(lines)) / len(lines),
        "vocabulary_used": len(used & vocabulary) / max(1, len(vocabulary)),
        "mean_length": sum(len(line.split()) for line in lines) / len(lines),
    }
    if training_captions is not None:
        scores["novel_captions"] = sum(line not in training_captions for line in lines) / len(lines)
    return scores


def collapse_warning(split: str, scores: Mapping[str, float], images: int) -> str | None:
    """One line when the captions of a split are mostly the same one, naming the usual causes; None otherwise."""
    distinct = scores.get("distinct_captions")
    if distinct is None or images < 10 or distinct >= COLLAPSED_BELOW:
        return None
    return (
        f"the model writes the same caption for most {split} images (only {distinct:.0%} of {images} captions "
        "differ): usual causes are a learning rate too high (a loss stuck near its first epochs' value), too few "
        "steps, or images it cannot see (a preprocessing bug that makes every input alike)"
    )
