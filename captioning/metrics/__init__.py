"""Standard captioning metrics with the numbers of the official coco-caption toolkit (pycocoevalcap).

BLEU-1..4 (Papineni et al., 2002), ROUGE-L (Lin, 2004) and CIDEr-D (Vedantam et al., 2015) run in Python
and NumPy on a Python reproduction of coco-caption's PTB tokenizer; METEOR (Banerjee & Lavie, 2005) and
SPICE (Anderson et al., 2016) run the official jars when Java and the jars are present. Imports only the
standard library and NumPy.
"""

from captioning.metrics.cider import CiderD
from captioning.metrics.scorer import CaptionScorer, metric_families, score_captions
from captioning.metrics.tokenize import ptb_tokenize, tokenize_captions

__all__ = ["CaptionScorer", "CiderD", "metric_families", "ptb_tokenize", "score_captions", "tokenize_captions"]
