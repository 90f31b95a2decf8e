"""BLEU, ROUGE-L and CIDEr-D against pycocoevalcap run in the same test, on real and synthetic captions."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from captioning.metrics import CaptionScorer, CiderD, score_captions

KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


def pycocoevalcap_scores(predictions: dict, references: dict) -> tuple[dict, dict]:
    """pycocoevalcap's COCOEvalCap steps (Java PTB tokenizer, Bleu, Rouge, Cider) on the predicted images."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in predictions})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in predictions})
    overall, per_image = {}, {i: {} for i in predictions}
    for scorer, keys in ((Bleu(4), KEYS[:4]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
        score, scores = (
            scorer.compute_score(gts, res, verbose=0) if keys == KEYS[:4] else scorer.compute_score(gts, res)
        )
        if keys != KEYS[:4]:
            score, scores = [score], [scores]
        for key, s, each in zip(keys, score, scores, strict=True):
            overall[key] = s
            for image_id, value in zip(gts, each, strict=True):
                per_image[image_id][key] = value
    return overall, per_image


def assert_same(ours: dict, overall: dict, per_image: dict, tol: float = 1e-6) -> None:
    for key in KEYS:
        assert ours[key] == pytest.approx(overall[key], abs=tol), key
        got = np.array([ours["per_image"][i][key] for i in per_image])
        want = np.array([per_image[i][key] for i in per_image])
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=key)


def test_500_random_coco_images(coco_captions, pycocoevalcap, java) -> None:
    """One human caption as the candidate, the other four as references, 500 images drawn at random."""
    rng = random.Random(2017)
    images = rng.sample(sorted(coco_captions), 500)
    predictions = {i: coco_captions[i][0] for i in images}
    references = {i: coco_captions[i][1:5] for i in images}
    ours = score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
    assert_same(ours, *pycocoevalcap_scores(predictions, references))


def test_shapes_validation_set(tmp_path, pycocoevalcap, java) -> None:
    """The built-in shapes data set: captions of other images as candidates (a poor model), and the truth."""
    import json

    from captioning.data.shapes import annotation_path, ensure_shapes

    ensure_shapes(tmp_path, image_size=32, split_sizes={"val": 60}, seed=3)
    captions: dict[int, list[str]] = {}
    for ann in json.loads(annotation_path(tmp_path, "val").read_text())["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    images = sorted(captions)
    rng = random.Random(0)
    for predictions in (
        {i: captions[rng.choice(images)][rng.randrange(5)] for i in images},
        {i: captions[i][0] for i in images},
    ):
        references = {i: captions[i][1:] for i in images}
        ours = score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
        assert_same(ours, *pycocoevalcap_scores(predictions, references))


def test_caption_scorer_reuses_references(coco_captions, pycocoevalcap, java) -> None:
    """One scorer, several calls: the whole set, then part of it (document frequencies of that part)."""
    images = sorted(coco_captions)[:120]
    references = {i: coco_captions[i][1:] for i in images}
    scorer = CaptionScorer(references, metrics=["BLEU", "ROUGE_L", "CIDEr"])
    full = {i: coco_captions[i][0] for i in images}
    part = {i: coco_captions[i][0] for i in images[::3]}
    for predictions in (full, part, full):
        assert_same(scorer.score(predictions, per_image=True), *pycocoevalcap_scores(predictions, references))


def test_cider_d_reward_matches_pycocoevalcap(coco_captions, pycocoevalcap) -> None:
    """SCST batches: 30 images x 3 samples; each sample set equals pycocoevalcap's Cider on those images."""
    from pycocoevalcap.cider.cider import Cider

    from captioning.metrics import tokenize_captions

    rng = random.Random(1)
    images = rng.sample(sorted(coco_captions), 30)
    references = {i: coco_captions[i][:5] for i in images}
    pool = [c for i in sorted(coco_captions)[:300] for c in coco_captions[i]]
    samples = [[rng.choice(pool) for _ in images] for _ in range(3)]
    reward = CiderD(references)
    batch = [s[k] for k in range(len(images)) for s in samples]  # image-major, 3 samples each
    image_ids = [i for i in images for _ in samples]
    scores = reward.score_batch(batch, image_ids)
    assert scores.shape == (90,) and scores.dtype == np.float64
    gts = tokenize_captions(references)
    for j, sample in enumerate(samples):
        res = tokenize_captions({i: [c] for i, c in zip(images, sample, strict=True)})
        _, theirs = Cider().compute_score(gts, res)
        np.testing.assert_allclose(scores[j :: len(samples)], theirs, rtol=0, atol=1e-9)


def reference_cider_d(cand: list[str], refs: list[list[str]], df: Counter, num_docs: int) -> float:
    """coco-caption's CIDEr-D formulas for one candidate, with given document frequencies (a test oracle)."""

    def vec(words: list[str]):
        counts = Counter(tuple(words[i : i + k]) for k in range(1, 5) for i in range(len(words) - k + 1))
        v = [{} for _ in range(4)]
        for g, tf in counts.items():
            v[len(g) - 1][g] = tf * (math.log(num_docs) - math.log(max(1.0, df[g])))
        return v, [math.sqrt(sum(x * x for x in d.values())) for d in v], max(len(words) - 1, 0)

    vc, nc, lc = vec(cand)
    total = np.zeros(4)
    for ref in refs:
        vr, nr, lr = vec(ref)
        for n in range(4):
            val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vc[n].items())
            if nc[n] != 0 and nr[n] != 0:
                val /= nc[n] * nr[n]
            total[n] += val * math.e ** (-((lc - lr) ** 2) / (2 * 6.0**2))
    return float(np.mean(total) / len(refs) * 10)


def document_frequencies(references: dict[object, list[list[str]]]) -> Counter:
    df: Counter = Counter()
    for refs in references.values():
        df.update({tuple(r[i : i + k]) for r in refs for k in range(1, 5) for i in range(len(r) - k + 1)})
    return df


def test_cider_d_inputs_and_separate_document_frequencies(coco_captions) -> None:
    """Words, token ids (with an end token) and strings give one score; a training corpus can weight n-grams."""
    images = sorted(coco_captions)[:40]
    words = {i: [c.lower().replace(".", "").split() for c in coco_captions[i][:5]] for i in images}
    vocab = {w: k + 1 for k, w in enumerate(sorted({w for refs in words.values() for r in refs for w in r}))}
    ids = {i: [[vocab[w] for w in r] for r in refs] for i, refs in words.items()}
    cands = [words[images[(k * 7) % 40]][k % 5] for k in range(40)]
    by_words = CiderD(words).score_batch(cands, images)
    by_ids = CiderD(ids, end_id=0).score_batch([[vocab[w] for w in c] + [0, 5, 9] for c in cands], images)
    np.testing.assert_allclose(by_ids, by_words, rtol=0, atol=1e-12)
    df = document_frequencies(words)
    oracle = [reference_cider_d(c, words[i], df, len(images)) for c, i in zip(cands, images, strict=True)]
    np.testing.assert_allclose(by_words, oracle, rtol=0, atol=1e-9)

    corpus = {i: [c.lower().replace(".", "").split() for c in coco_captions[i]] for i in sorted(coco_captions)[:400]}
    reward = CiderD({i: words[i] for i in images[:10]}, df_references=corpus)
    scores = reward.score_batch(cands[:10], images[:10])
    df = document_frequencies(corpus)
    oracle = [reference_cider_d(c, words[i], df, len(corpus)) for c, i in zip(cands[:10], images[:10], strict=True)]
    np.testing.assert_allclose(scores, oracle, rtol=0, atol=1e-9)

    id_to_token = {v: w for w, v in vocab.items()}
    text_reward = CiderD({i: coco_captions[i][:5] for i in images})
    with pytest.raises(TypeError, match="id_to_token"):
        text_reward.score_batch([[1, 2]], images[:1])
    mapped = CiderD({i: coco_captions[i][:5] for i in images}, id_to_token=id_to_token, end_id=0)
    np.testing.assert_allclose(
        mapped.score_batch([[vocab[w] for w in c] + [0] for c in cands], images),
        text_reward.score_batch([" ".join(c) for c in cands], images),
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="no references"):
        text_reward.score_batch(["a cat"], ["not an image"])


def test_edge_case_captions(coco_captions, pycocoevalcap, java) -> None:
    """Captions that tokenize to nothing, fractions (a no-break space inside a token), acronyms, repeats."""
    images = sorted(coco_captions)[:8]
    texts = ["...", "22 3/4 st. and 8th ave.", "A T.V. on a stand", "a a a a a a a a", "?", "it's a dog's toy!!",
             "Street sign at 23 3/4 St and 8th Ave.", "x"]  # fmt: skip
    predictions = dict(zip(images, texts, strict=True))
    references = {i: coco_captions[i][:4] + ([texts[6]] if k == 0 else []) for k, i in enumerate(images)}
    ours = score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
    assert_same(ours, *pycocoevalcap_scores(predictions, references))


def test_tiny_inputs(pycocoevalcap, java) -> None:
    """Fewer tokens than the n-gram order, one image, one reference."""
    for predictions, references in (
        ({1: "a cat"}, {1: ["a cat", "a dog"]}),
        ({"x": "cat"}, {"x": ["cat"]}),
        ({1: "a b c", 2: "d"}, {1: ["a b"], 2: ["d e f g h"]}),
    ):
        ours = score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
        assert_same(ours, *pycocoevalcap_scores(predictions, references))
        np.testing.assert_allclose(
            CiderD(references).score_batch(list(predictions.values()), list(predictions)),
            [ours["per_image"][i]["CIDEr"] for i in predictions],
            atol=1e-12,
        )


def test_random_corpora_against_pycocoevalcap_scorers(pycocoevalcap) -> None:
    """Random lower-case word captions (which tokenize to themselves): pycocoevalcap's scorers, no Java needed."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(7)
    for trial in range(25):
        words = [f"w{k}" for k in range(rng.choice([3, 8, 40]))]
        images = list(range(rng.randint(1, 30)))

        def caption(words: list[str] = words) -> str:
            return " ".join(rng.choice(words) for _ in range(rng.choice([1, 2, 3, 5, 9, 14, 70])))

        references = {i: [caption() for _ in range(rng.randint(1, 6))] for i in images}
        predictions = {i: caption() for i in images}
        gts, res = references, {i: [c] for i, c in predictions.items()}
        ours = score_captions(predictions, references, metrics=["BLEU", "ROUGE_L", "CIDEr"], per_image=True)
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouge_each = Rouge().compute_score(gts, res)
        cider, cider_each = Cider().compute_score(gts, res)
        theirs = {f"Bleu_{k + 1}": (bleu[k], bleu_each[k]) for k in range(4)}
        theirs.update({"ROUGE_L": (rouge, rouge_each), "CIDEr": (cider, cider_each)})
        for key, (overall, each) in theirs.items():
            assert ours[key] == pytest.approx(overall, abs=1e-9), (trial, key)
            got = [ours["per_image"][i][key] for i in images]
            np.testing.assert_allclose(got, each, rtol=0, atol=1e-9, err_msg=f"{trial} {key}")
