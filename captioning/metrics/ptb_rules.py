"""Word lists of Stanford CoreNLP 3.4.1's PTBLexer, as measured on the jar that pycocoevalcap ships.

Each list was read off the jar's own output (probing "X. a", "X. 5", "X. A x" and "X." for thousands of
candidate words), so that the Python tokenizer keeps or splits a final period exactly as the jar does.
"""

from __future__ import annotations

# "X." stays one token whatever follows (the lexer's ABBREV1/ABBREV2 lists), in any letter case
ABBREVIATIONS_CASELESS = frozenset(
    """adj adm adv al ala alex apr ariz assn assoc asst attys aug ave bancorp bhd bldg blvd brig bros calif capt cf
    cie cmdr co col colo comdr conn corp cos cpl ct dak dec dept det dr drs elec ens esq est etc ext feb fla fri ft
    ga gen gov govs hon inc ind insp intl invt jan jos jr jul jun kan kans ky lieut lt ltd maj mar md messrs mich minn
    mlle mme mo mon mont mr mrs ms msgr mt natl neb nev nov oct okla penn pfc ph plc pres prof profs pvt rd rep reps
    rev rt sen sens sep sept seq sfc sgt spc sq sr st ste supt supts sys tel tenn thu thurs treas tue tues univ va vs
    vt wed wis wisc wm wyo ph.d ed.d""".split()
)
# ... only in exactly these spellings
ABBREVIATIONS_EXACT = frozenset(
    """ARK AZ Ark Az DEL Del ILL Ill LA La MASS MISS Mass Mfg Miss Mtg ORE Ore PA Pa Pte Pty Ptys TEX Tex WASH Wash
    mfg mtg pte pty ptys""".split()
)
# "X." stays one token only before a number (ABBREV3), in any letter case
ABBREVIATIONS_BEFORE_NUMBER = frozenset("art ca fig figs no nos op pp prop".split())
# A one-letter "X." splits into "X" "." when one of these words (capitalised or upper case) follows
SENTENCE_STARTS = frozenset(
    """a about according additionally after an as at but earlier he her here however if in it last many more mr. ms.
    now once one other our she since so some such that the their then there these they this we when while what yet
    you""".split()
)
# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing (its upper-case bracket names never match,
# because the jar ran with -lowerCase: "-lrb-" and friends stay in the text)
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


def is_abbreviation(word: str) -> bool:
    """Whether ``word + "."`` is kept as one token before any continuation."""
    return word in ABBREVIATIONS_EXACT or word.lower() in ABBREVIATIONS_CASELESS
