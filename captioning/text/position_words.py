"""Position words of captions, swapped word by word: the foils of a relation probe and the captions of a mirror image.

A foil is the true caption with every position word replaced by its opposite ("a cat above a dog" -> "a cat below a
dog"), as relation probes of vision-language models build them (Kamath et al., 2023, "What's 'up' with
vision-language models?"; Yuksekgonul et al., 2023, ARO). A horizontal flip of the image swaps only left and right,
a vertical one the rest.
Swaps match whole words ("bright" never becomes "bleft"), keep the capital of a capitalised word, reach inside
hyphenated words ("top-left" -> "bottom-right"), and are their own inverse: swapping twice gives the caption back.
Chinese position words ("左边", "上方", "左上角") are swapped character by character within the phrase.
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
# Chinese position phrases, in which 左/右, 上/下 and 顶/底 are swapped: Python's \b does not separate Chinese
# characters (all are \w), so whole phrases are matched, longest first. Each phrase's swaps are in the list too,
# so swapping twice gives the caption back; a lone character stays ("桌子上": on the table; "十个左右": about ten).
ZH_POSITION_PHRASES = tuple(
    "左边 右边 左侧 右侧 左面 右面 左方 右方 左端 右端 左部 右部 左半 右半 "
    "上边 下边 上侧 下侧 上面 下面 上方 下方 上端 下端 上部 下部 上半 下半 顶部 底部 顶端 底端 "
    "左上角 右上角 左下角 右下角 左上方 右上方 左下方 右下方".split()
)
ZH_LEFT_RIGHT = {"左": "右", "右": "左"}
ZH_UP_DOWN = {"上": "下", "下": "上", "顶": "底", "底": "顶"}


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


def _zh_swapper(characters: dict[str, str]):
    """Swaps `characters` inside the Chinese position phrases that hold one ("左上角" -> "右上角" for left-right)."""
    phrases = sorted((p for p in ZH_POSITION_PHRASES if set(p) & set(characters)), key=len, reverse=True)
    pattern, table = re.compile("|".join(phrases)), str.maketrans(characters)
    return lambda caption: caption if caption.isascii() else pattern.sub(lambda m: m.group().translate(table), caption)


def _both(english, chinese):
    return lambda caption: chinese(english(caption))


_swap_positions = _both(_swapper(POSITION_OPPOSITES), _zh_swapper(ZH_LEFT_RIGHT | ZH_UP_DOWN))
_swap_left_right = _both(_swapper(LEFT_RIGHT), _zh_swapper(ZH_LEFT_RIGHT))
_swap_up_down = _both(_swapper(UP_DOWN), _zh_swapper(ZH_UP_DOWN))


def swap_positions(caption: str) -> str:
    """The caption with every position word swapped for its opposite: left/right, above/below, top/bottom, ...

    Returns the caption unchanged when it has none.
    """
    return _swap_positions(caption)


def swap_left_right(caption: str) -> str:
    """The caption of the horizontally mirrored image: "left" and "right" (左 and 右) swapped, everything else kept."""
    return _swap_left_right(caption)


def swap_up_down(caption: str) -> str:
    """The caption of the vertically mirrored image: "above" and "below", "top" and "bottom" (上 and 下, 顶 and 底) ...
    swapped."""
    return _swap_up_down(caption)


def position_foil(caption: str) -> str | None:
    """The foil of a caption that makes a position claim, None for a caption without one."""
    foil = swap_positions(caption)
    return foil if foil != caption else None
