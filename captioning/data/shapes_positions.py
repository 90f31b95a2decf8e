"""Position words of the basic shapes captions, checked against the scene: "a red circle above a blue square" is
right only when that circle is above that square, "a green triangle in the top left" only when it is there.

`grounded_accuracy` checks colours and kinds; a model can score well on it while it gets "above" and "left of"
wrong, or never says them. `position_scores` reports both sides: how many captions make a position claim, and how
many captions name every shape and place every one they place correctly. Chinese captions are read by
`shapes_zh.position_claims_zh`, which gives the same claims.
"""

from __future__ import annotations

from captioning.data.shapes import COLOURS, KINDS, _place, _relation, caption_matches_scene, caption_reader
from captioning.data.shapes_zh import position_claims_zh

RELATIONS = ("to the left of", "to the right of", "above", "below")  # as `_relation` writes them
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "middle", "right")

Shape = tuple[str | None, str]  # (colour or None, kind), as a caption names it


def position_claims(caption: str) -> list[tuple]:
    """The position claims of a caption, in order: ("relation", A, "above", B) for "A above B", and
    ("place", A, "top left") for "A in the top left" (or "A in the centre")."""
    words = caption.lower().split()
    claims, colour, last, pending = [], None, None, None
    i = 0
    while i < len(words):
        relation = next((r for r in RELATIONS if words[i : i + len(r.split())] == r.split()), None)
        if relation and last is not None:
            pending, i = (last, relation), i + len(relation.split())
            continue
        place = _place_phrase(words, i)
        if place and last is not None:
            claims.append(("place", last, place[0]))
            i += place[1]
            continue
        word = words[i]
        if word in COLOURS:
            colour = word
        elif word in KINDS:
            last, colour = (colour, word), None
            if pending:
                claims.append(("relation", pending[0], pending[1], last))
                pending = None
        i += 1
    return claims


def _place_phrase(words: list[str], i: int) -> tuple[str, int] | None:
    """("top left", 4) for "in the top left" at words[i:], ("centre", 3) for "in the centre"; else None."""
    if words[i : i + 2] != ["in", "the"]:
        return None
    if words[i + 2 : i + 3] == ["centre"]:
        return "centre", 3
    if len(words) >= i + 4 and words[i + 2] in ROWS and words[i + 3] in COLUMNS:
        return f"{words[i + 2]} {words[i + 3]}", 4
    return None


def _matching(scene: list[dict], named: Shape) -> list[dict]:
    colour, kind = named
    return [s for s in scene if s["kind"] == kind and colour in (None, s["colour"])]


def claim_holds(claim: tuple, scene: list[dict], image_size: int) -> bool:
    """True when some shapes of the scene that fit the claim's names stand as it says (the data's own rules:
    `_relation` along the axis of greater distance, `_place` by thirds of the image)."""
    if claim[0] == "place":
        _, named, place = claim
        return any(_place(s, image_size) == place for s in _matching(scene, named))
    _, first, relation, second = claim
    return any(
        a is not b and _relation(a, b) == relation for a in _matching(scene, first) for b in _matching(scene, second)
    )


def position_scores(captions: dict, scenes: dict, image_size: int, language: str = "en") -> dict[str, float]:
    """{"position_claims": share of captions with a position word, "position_accuracy": share of captions that name
    every shape correctly and whose every position claim holds, "claims_right": the same share among the captions
    that make a position claim (0 when none does)}. `language` ("en" or "zh") picks the readers of the captions."""
    read = caption_reader(language)
    read_claims = position_claims_zh if language == "zh" else position_claims
    if not captions:
        return {"position_claims": 0.0, "position_accuracy": 0.0, "claims_right": 0.0}
    claimed = right = claimed_right = 0
    for image_id, caption in captions.items():
        claims, scene = read_claims(caption), scenes[image_id]
        holds = caption_matches_scene(caption, scene, read) and all(claim_holds(c, scene, image_size) for c in claims)
        claimed += bool(claims)
        right += holds
        claimed_right += holds and bool(claims)
    return {
        "position_claims": claimed / len(captions),
        "position_accuracy": right / len(captions),
        "claims_right": claimed_right / claimed if claimed else 0.0,
    }
