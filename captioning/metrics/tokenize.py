"""PTB tokenization of captions in Python, reproducing pycocoevalcap's ``PTBTokenizer``.

pycocoevalcap writes all captions of a call to one file, one per line, runs Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` (Java) over it, and drops punctuation tokens. This module
reproduces that output without Java: a longest-match lexer over the rules of CoreNLP's ``PTBLexer`` that
captions exercise (words, hyphens, contractions, numbers, abbreviations, quotes, brackets, symbols),
with a fast path for the plain captions that make up most of a data set. A few rules look past the end of
a caption into the next line of pycocoevalcap's file, so captions are tokenized as an ordered list.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence

from captioning.metrics.ptb_rules import (
    ABBREVIATIONS_BEFORE_NUMBER,
    ABBREVIATIONS_CASELESS,
    ABBREVIATIONS_EXACT,
    PUNCTUATIONS,
    SENTENCE_STARTS,
    is_abbreviation,
)

__all__ = ["ptb_tokenize", "tokenize_captions", "tokenize_lines"]

# Lines of plain words, commas and final periods need no lexer (most captions). A line needs it for any
# other character, for a comma or period that does not end a word, or for a word whose period may belong to
# it (an abbreviation or an initial)
_OTHER_CHARACTER = re.compile(r"[^A-Za-z0-9 ,.\n]")
_QUICK_WORD = re.compile(r"[A-Za-z]+(?=[ \t,]|$)")  # a word that no rule but THING can read
_ASSIMILATIONS = frozenset(["cannot", "gonna", "wanna", "gotta", "lemme", "gimme"])
_SPACE = " \t\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u3000"
_NEWLINES = re.compile(r"\r\n|[\n\r\u2028\u2029\u000b\u000c\u0085]")
_OTHER_NEWLINES = re.compile(r"[\r\u2028\u2029\u000b\u000c\u0085]")

_AN = r"[^\W_]"  # letter or digit
_ALNUM_ = r"\w"  # letter, digit or underscore
_LETTER = r"[^\W\d_]"
_APOS = "['\u2019]"
_PART = rf"(?:[dDoOlL]{_APOS}{_ALNUM_}+|{_ALNUM_}+)"
_THING = rf"{_PART}(?:-{_PART})*"
_NUM = r"(?:\d+(?:[.:,]\d+)*|(?:[.:,]\d+)+)"
_REDAUX = rf"{_APOS}(?:[msdMSD]|re|ve|ll|RE|VE|LL|Re|Ve|Ll)"

# (first character, pattern, kind): the characters a match can start with, the rule, the kind of token.
# Longest match wins; on a tie, the earlier rule. A group "tok" marks the token when the
# rule also reads trailing context (as JFlex's "r1/r2" rules do, where the context counts for the length).
_RULES: list[tuple[str, re.Pattern[str], str]] = [
    (r"[Cc]", re.compile(r"(?P<tok>[Cc][Aa][Nn])(?=[Nn][Oo][Tt])[Nn][Oo][Tt]"), "word"),
    (
        r"[gGwWlL]",
        re.compile(r"(?P<tok>(?i:gon(?=na)|wan(?=na)|got(?=ta)|lem(?=me)|gim(?=me)))(?i:na|ta|me)(?![A-Za-z])"),
        "word",
    ),
    (r"[A-Za-z]", re.compile(rf"(?P<tok>[A-Za-z]*[A-MO-Za-mo-z])[nN]{_APOS}[tT]"), "word"),
    (r"[nN]", re.compile(rf"[nN]{_APOS}[tT]"), "apos"),
    ("'", re.compile(r"'\d\d(?=\s|$)"), "apos"),
    (r"\w", re.compile(rf"(?P<tok>{_THING}){_REDAUX}"), "word"),
    ("['\u2019]", re.compile(_REDAUX), "apos"),
    (
        "['\u2019lLdDjJCc]",
        re.compile(rf"{_APOS}n{_APOS}|{_APOS}n(?![A-Za-z])|[lLdDjJ]{_APOS}|{_APOS}(?:em|till?|cause|[2-9]0s)|[Cc]'mon"),
        "apos",
    ),
    (r"[yY]", re.compile(rf"(?P<tok>[yY]{_APOS})[A-Za-z]+"), "apos"),
    (
        r"[A-Za-z]",
        re.compile(rf"[A-Za-z]*[aeiouyAEIOUY]{_APOS}[aeiouA-Z][A-Za-z]*|[A-HJ-XZn]{_APOS}[A-Za-z]{{2,}}"),
        "apos",
    ),
    (r"'", re.compile(r"(?P<tok>'[tT])(?:is|was)"), "apos"),
    (r"\d", re.compile(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"), "word"),
    (r"\d", re.compile(r"(?:\d{1,4}[- \u00a0])?\d{1,4}/\d{1,4}"), "fraction"),
    (r"[-+\d.:,]", re.compile(rf"[-+]?{_NUM}"), "word"),
    (r"\w", re.compile(_THING), "word"),
    (r"\w", re.compile(rf"{_AN}+(?:-[A-Za-z]+){{0,2}}(?:/{_AN}+(?:-[A-Za-z]+){{0,2}}){{1,2}}"), "word"),
    (r"\w", re.compile(rf"{_LETTER}{_AN}*(?:[.!?]{_LETTER}{_AN}*)+"), "word"),
    (r"[A-Z]", re.compile(r"[A-Z]+(?:[+&][A-Z]+)+"), "word"),
    (r"[A-Za-z]", re.compile(r"[A-Za-z](?:\.[A-Za-z])+\."), "word"),
    (r"\w", re.compile(rf"(?P<tok>{_AN}+\.)(?=[,;:])"), "word"),
    (r"[A-Za-z]", re.compile(r"[A-Za-z]+(?:\.[A-Za-z]+)*\."), "abbreviation"),
    (r"[\w.+\-@#]", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|@[A-Za-z_]\w*|#[A-Za-z]\w*"), "word"),
    (r"h", re.compile(r"https?://[^\s\"<>|(){}]+[^\s\"<>|.!?(){},-]"), "word"),
    ("[.\u2026]", re.compile(r"\.\.\.+|\.[ \u00a0](?:\.[ \u00a0])+\.|\u2026"), "drop"),
    (r"[?!]", re.compile(r"[?!]+"), "word"),
    ("[-\u2013\u2014]", re.compile(r"-{2,4}|[\u2013\u2014]"), "drop"),
    (r"-", re.compile(r"-+"), "word"),
    (r"[<>:;=]", re.compile(r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]](?!\w)"), "smiley"),
    (r"[()\[\]{}]", re.compile(r"[()\[\]{}]"), "bracket"),
    (
        "[`'\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\"]",
        re.compile("``|''|\"|[`'\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f]"),
        "drop",
    ),
    (r"[A-Z$#*@_]", re.compile(r"[A-Z]*\$|#+|\*+|@+|_+"), "word"),
    (r"<", re.compile(r"<[A-Za-z!/?][^<>\n]*>"), "word"),
    (r".", re.compile(r".", re.DOTALL), "word"),
]
_RULES_BY_CHAR: dict[str, list[tuple[re.Pattern[str], str]]] = {}


def _rules_for(c: str) -> list[tuple[re.Pattern[str], str]]:
    """The rules whose match can start with character ``c``."""
    rules = _RULES_BY_CHAR.get(c)
    if rules is None:
        rules = [(p, kind) for first, p, kind in _RULES if re.match(first, c, re.DOTALL)]
        _RULES_BY_CHAR[c] = rules
    return rules


_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SENTENCE_START = re.compile(r"[ \t\n\u00a0]+([A-Z][A-Za-z]*\.?)[ \t\n\u00a0]")
_BEFORE_NUMBER = re.compile(r"[ \t\n\u00a0]?\d")


def _abbreviation(word: str, after: str) -> bool:
    """Whether ``word`` + "." stays one token, given the text after the period."""
    if len(word) == 1:  # an initial, unless a sentence obviously starts after it
        m = _SENTENCE_START.match(after)
        return not (m and m.group(1).lower() in SENTENCE_STARTS)
    if is_abbreviation(word):
        return True
    return word.lower() in ABBREVIATIONS_BEFORE_NUMBER and _BEFORE_NUMBER.match(after) is not None


_KEEPS_PERIOD = ABBREVIATIONS_CASELESS | ABBREVIATIONS_BEFORE_NUMBER | {w.lower() for w in ABBREVIATIONS_EXACT}


def _plain_word(word: str) -> bool:
    """Whether ``word.`` before a space or a line end always splits into ``word`` and ``.``."""
    return len(word) > 1 and word.lower() not in _KEEPS_PERIOD


def _lex(text: str, follow: str) -> list[str]:
    """All tokens of one line (lower-cased, punctuation dropped), with ``follow`` the text after the line."""
    s = text + follow
    end = len(text)
    out: list[str] = []
    i = 0
    while i < end:
        c = s[i]
        if c in _SPACE or c.isspace():
            i += 1
            continue
        quick = _QUICK_WORD.match(s, i, end)
        if quick is not None and quick.group(0).lower() not in _ASSIMILATIONS:
            out.append(quick.group(0).lower())
            i = quick.end()
            continue
        best, best_len, best_kind = None, 0, ""
        for pattern, kind in _rules_for(c):
            m = pattern.match(s, i, end if kind != "abbreviation" else len(s))
            if m is None:
                continue
            length = m.end() - i
            if length > best_len:
                best, best_len, best_kind = m, length, kind
        assert best is not None
        token = best.group("tok") if "tok" in best.re.groupindex else best.group(0)
        kind = best_kind
        if kind == "abbreviation":
            if not _abbreviation(token[:-1], s[best.end() :]):
                token = token[:-1]
            kind = "word"
        i += len(token)
        if kind == "drop":
            continue
        if kind == "bracket":
            token = _BRACKETS[token]
        elif kind == "smiley":
            token = "".join(_BRACKETS.get(ch, ch) for ch in token)
        elif kind == "apos":
            token = token.replace("\u2019", "'")
        elif kind == "fraction":
            token = token.replace(" ", "\u00a0")
        token = token.lower()
        if token not in PUNCTUATIONS:
            out.append(token)
    return out


def _normalize(caption: str) -> str:
    # pycocoevalcap replaces "\n"; other line breaks would shift its lines, here they are spaces
    return _NEWLINES.sub(" ", caption)


def tokenize_lines(captions: Sequence[str]) -> list[str]:
    """Tokenizes captions as pycocoevalcap does when they are the lines of one file, in this order.

    Args:
        captions: raw captions.

    Returns:
        One string per caption: lower-cased tokens joined by single spaces, punctuation removed.
    """
    if not captions:
        return []
    text = "\n".join(captions)
    if _OTHER_NEWLINES.search(text):
        captions = [_normalize(c) for c in captions]
        text = "\n".join(captions)
    elif text.count("\n") != len(captions) - 1:  # pycocoevalcap replaces "\n" in a caption by a space
        captions = [c.replace("\n", " ") for c in captions]
        text = "\n".join(captions)
    starts = list(itertools.accumulate((len(c) + 1 for c in captions), initial=0))
    slow = {m.start() for m in _OTHER_CHARACTER.finditer(text)}
    for mark in ".,":
        pieces = text.split(mark)
        position = -1
        for piece, after in zip(pieces, pieces[1:], strict=False):
            position += len(piece) + 1  # of this mark
            word = piece[max(piece.rfind(" "), piece.rfind("\n")) + 1 :]
            if (after and after[0] not in " \n") or not word or (mark == "." and not _plain_word(word)):
                slow.add(position)
    slow = sorted({bisect.bisect_right(starts, position) - 1 for position in slow})
    # the fast lines all at once: drop commas and periods, lower-case, normalise spaces
    plain = text.replace(",", " ").replace(".", " ").lower()
    while "  " in plain:
        plain = plain.replace("  ", " ")
    out = plain.replace(" \n", "\n").replace("\n ", "\n").strip(" ").split("\n")
    for j in slow:
        follow = "\n".join(captions[j : j + 3])[len(captions[j]) :][:80]  # what the jar's lookahead may read
        out[j] = " ".join(_lex(captions[j], follow))
    return out


def ptb_tokenize(caption: str) -> str:
    """Tokenizes one caption alone (as the last line of pycocoevalcap's file)."""
    return tokenize_lines([caption])[0]


def tokenize_captions(captions: Mapping[Hashable, Iterable[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's ``PTBTokenizer().tokenize`` on ``{image_id: [caption, ...]}``, without Java.

    Captions are tokenized in the same order as pycocoevalcap writes them (images in mapping order, captions
    in list order), since a rule can look at the start of the next caption.
    """
    keys = list(captions)
    groups = [list(captions[k]) for k in keys]
    flat = tokenize_lines([c for g in groups for c in g])
    out: dict[Hashable, list[str]] = {}
    pos = 0
    for k, g in zip(keys, groups, strict=False):
        out[k] = flat[pos : pos + len(g)]
        pos += len(g)
    return out
