"""Position words of captions, swapped word by word: the foils of a relation probe and the captions of a mirror image.

A foil is the true caption with every position word replaced by its opposite ("a cat above a dog" -> "a cat below a
dog"), as relation probes of vision-language models build them (Kamath et al., 2023, "What's 'up' with
vision-language models?"; Yuksekgonul et al., 2023, ARO). A horizontal flip of the image swaps only left and right,
a vertical one the rest.
Swaps match whole words ("bright" never becomes "bleft"), keep the capital of a capitalised word, reach inside
hyphenated words ("top-left" -> "bottom-right"), and are their own inverse: swapping twice gives the caption back.
"""

from __future__ import annotations

import re

# Each phrase with its opposite; a phrase appears once, so that every swap is reversible.
POSITION_OPPOSITES = (
    ("on top of", "underneath"),
    ("above", "below"),
    ("over", "under"),
    ("left", "right"),
    ("top", "bottom"),
    ("upper", "lower"),
    ("leftmost", "rightmost"),
    ("topmost", "bottommost"),
)
LEFT_RIGHT = (("left", "right"), ("leftmost", "rightmost"))
UP_DOWN = tuple(pair for pair in POSITION_OPPOSITES if pair not in LEFT_RIGHT)
# Left as they are: phrases that say the same thing swapped ("one above the other"), and "on bottom of", whose
# word-level swap "on top of" has its own opposite ("underneath"), so swapping it would not be reversible.
KEPT = ("one above the other", "one below the other", "one on top of the other", "on bottom of")


def _swapper(pairs: tuple[tuple[str, str], ...]):
    opposite = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    phrases = sorted(opposite, key=len, reverse=True)  # "on top of" before "top"
    kept = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in KEPT)
    swapped = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases)
    pattern = re.compile(rf"\b(?:(?P<kept>{kept})|(?P<word>{swapped}))\b", re.IGNORECASE)

    def replace(match: re.Match) -> str:
        word = match.group("word")
        if word is None:
            return match.group(0)
        new = opposite[" ".join(word.lower().split())]
        if word.isupper() and len(word) > 1:  # "ABOVE" -> "BELOW"
            return new.upper()
        return new[0].upper() + new[1:] if word[0].isupper() else new

    return lambda caption: pattern.sub(replace, caption)


_swap_positions = _swapper(POSITION_OPPOSITES)
_swap_left_right = _swapper(LEFT_RIGHT)
_swap_up_down = _swapper(UP_DOWN)


def swap_positions(caption: str) -> str:
    """The caption with every position word swapped for its opposite: left/right, above/below, top/bottom, ...

    Returns the caption unchanged when it has none.
    """
    return _swap_positions(caption)


def swap_left_right(caption: str) -> str:
    """The caption of the horizontally mirrored image: "left" and "right" swapped, everything else kept."""
    return _swap_left_right(caption)


def swap_up_down(caption: str) -> str:
    """The caption of the vertically mirrored image: "above" and "below", "top" and "bottom" ... swapped."""
    return _swap_up_down(caption)


def position_foil(caption: str) -> str | None:
    """The foil of a caption that makes a position claim, None for a caption without one."""
    foil = swap_positions(caption)
    return foil if foil != caption else None
