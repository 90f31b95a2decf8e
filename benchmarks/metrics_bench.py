"""Speed of captioning.metrics against pycocoevalcap, measured in one run and printed as ratios.

(a) BLEU-1..4 + ROUGE-L + CIDEr-D with PTB tokenization on all 5,000 images of COCO val2017 (first caption
    against the other four): pycocoevalcap (Java PTBTokenizer + Bleu + Rouge + Cider) vs ``score_captions``.
(b) The SCST reward: CIDEr-D of 50 images x 5 sampled captions against their 5 references, on the same
    pre-tokenized text: pycocoevalcap's Cider/CiderScorer vs ``CiderD.score_batch``.

Run: ``python benchmarks/metrics_bench.py [--repeats 3]`` (needs pycocoevalcap and Java, and ../shared/data).
Each timing is the best of ``--repeats`` runs, for both sides alike, run alternately (same machine load).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ANNOTATIONS = ROOT / ".." / "shared" / "data" / "coco-val2017-mini" / "annotations" / "captions_val2017.json"


def best_times(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[float, float, object, object]:
    """Best time of each of two functions, run alternately so that both see the same machine load."""
    best = [float("inf"), float("inf")]
    results: list[object] = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            start = time.perf_counter()
            results[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1], results[0], results[1]


def load_captions() -> dict[int, list[str]]:
    data = json.loads(ANNOTATIONS.read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    return dict(captions)


def bench_corpus(captions: dict[int, list[str]], repeats: int) -> float:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from captioning.metrics import score_captions

    predictions = {i: c[0] for i, c in captions.items()}
    references = {i: c[1:] for i, c in captions.items()}

    def theirs() -> dict[str, float]:
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
        res = tokenizer.tokenize({i: [{"caption": c}] for i, c in predictions.items()})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        return {**{f"Bleu_{k + 1}": b for k, b in enumerate(bleu)}, "ROUGE_L": rouge, "CIDEr": cider}

    def ours() -> dict[str, float]:
        return score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"])

    t_theirs, t_ours, s_theirs, s_ours = best_times(theirs, ours, repeats)
    worst = max(abs(s_theirs[k] - s_ours[k]) for k in s_theirs)
    num_refs = sum(map(len, references.values()))
    print(f"(a) BLEU+ROUGE-L+CIDEr-D with tokenization, {len(predictions)} images, {num_refs} references")
    print(f"    pycocoevalcap {t_theirs:.3f} s   ours {t_ours:.3f} s   ratio {t_theirs / t_ours:.1f}x")
    print(f"    max |ours - pycocoevalcap| over the scores: {worst:.1e}")
    return t_theirs / t_ours


def bench_reward(captions: dict[int, list[str]], repeats: int, images: int = 50, samples: int = 5) -> float:
    from pycocoevalcap.cider.cider import Cider

    from captioning.metrics import CiderD
    from captioning.metrics.tokenize import tokenize_captions

    rng = random.Random(0)
    ids = sorted(captions)
    chosen = rng.sample(ids, images)
    references = {i: captions[i][:5] for i in chosen}
    # "sampled" captions: captions of random other images, as a model's samples early in training look
    pool = [c for i in ids if i not in references for c in captions[i]]
    candidates = [pool[rng.randrange(len(pool))] for _ in range(images * samples)]
    image_ids = [i for i in chosen for _ in range(samples)]
    # the same pre-tokenized text for both sides
    ref_text = tokenize_captions(references)
    cand_text = [t[0] for t in tokenize_captions({k: [c] for k, c in enumerate(candidates)}).values()]
    cand_words = [c.split() for c in cand_text]
    vocab = {w: i for i, w in enumerate(sorted({w for refs in ref_text.values() for r in refs for w in r.split()}))}
    cand_ids = [[vocab.setdefault(w, len(vocab)) for w in c] for c in cand_words]
    ref_ids = {i: [[vocab[w] for w in r.split()] for r in refs] for i, refs in ref_text.items()}

    def theirs() -> np.ndarray:
        gts = {k: ref_text[i] for k, i in enumerate(image_ids)}
        res = {k: [c] for k, c in enumerate(cand_text)}
        return Cider().compute_score(gts, res)[1]

    reward_words = CiderD({i: [r.split() for r in refs] for i, refs in ref_text.items()})
    reward_ids = CiderD(ref_ids)
    t_theirs, t_words, _, words_scores = best_times(
        theirs, lambda: reward_words.score_batch(cand_words, image_ids), max(repeats, 10)
    )
    _, t_ids, _, ids_scores = best_times(theirs, lambda: reward_ids.score_batch(cand_ids, image_ids), max(repeats, 10))
    # same definition check: each sample set alone, one caption per image, against pycocoevalcap
    worst = 0.0
    for j in range(samples):
        sel = list(range(j, len(cand_text), samples))
        theirs_j = Cider().compute_score(
            {i: ref_text[i] for i in chosen}, {chosen[k]: [cand_text[s]] for k, s in enumerate(sel)}
        )[1]
        worst = max(worst, float(np.abs(theirs_j - words_scores[sel]).max()))
    assert np.allclose(words_scores, ids_scores)
    print(f"(b) CIDEr-D reward, {images} images x {samples} samples against {images} x 5 references, pre-tokenized")
    print("    baseline: pycocoevalcap has no CiderD class, so its Cider/CiderScorer (CIDEr-D) on the same text;")
    print("    it counts document frequencies on each call, ours come from the references, counted once")
    print(
        f"    pycocoevalcap {t_theirs * 1e3:.2f} ms   ours (words) {t_words * 1e3:.2f} ms   {t_theirs / t_words:.1f}x"
    )
    print(f"    ours (token ids) {t_ids * 1e3:.2f} ms   {t_theirs / t_ids:.1f}x")
    print(f"    one sample per image vs pycocoevalcap, max |diff|: {worst:.1e}")
    return t_theirs / t_words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the best counts")
    args = parser.parse_args(argv)
    if not ANNOTATIONS.is_file():
        print(f"error: {ANNOTATIONS} not found (the shared data folder)", file=sys.stderr)
        return 2
    captions = load_captions()
    a = bench_corpus(captions, args.repeats)
    b = bench_reward(captions, args.repeats)
    print(f"summary: (a) {a:.1f}x faster (goal 10x), (b) {b:.1f}x faster (goal 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
