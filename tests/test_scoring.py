"""`Captioner.score`: the teacher-forced log-probability of given captions, on a really trained tiny model."""

from __future__ import annotations

import pytest
import torch

from captioning.decoding import DecodeSpec
from captioning.model.generation import decode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_equals_the_summed_step_log_probabilities_of_greedy_decoding_on_its_own_captions(captioner, test_images):
    images = test_images[:8]
    tok = captioner.tokenizer
    with torch.no_grad():
        memory = captioner.model.encode(torch.stack([captioner.preprocess(i) for i in images]))
        greedy = decode(captioner.model.decoder, memory, DecodeSpec(mode="greedy", min_length=0), tok)
    texts = tok.decode_batch(greedy.tokens)
    scores = captioner.score(images, texts)
    assert [s.text for s in scores] == texts
    torch.testing.assert_close(torch.tensor([s.log_prob for s in scores]), greedy.log_probs, atol=1e-4, rtol=1e-5)
    for score, length in zip(scores, greedy.lengths.tolist(), strict=True):
        assert len(score.token_log_probs) == length == len(score.words) + 1  # the words and the end token
        assert sum(score.token_log_probs) == pytest.approx(score.log_prob, abs=1e-5)
        assert all(p <= 0 for p in score.token_log_probs)


def test_any_number_of_captions_per_image_scores_as_one_caption_at_a_time(captioner, test_images):
    images = test_images[:3]
    captions = [["a red circle", "a small blue square above a green triangle"], "a yellow diamond", []]
    together = captioner.score(images, captions, batch_size=2)
    assert isinstance(together[0], list) and len(together[0]) == 2 and together[2] == []
    alone = [captioner.score(images[0], c).log_prob for c in captions[0]] + [captioner.score(images[1], captions[1])]
    assert together[0][0].log_prob == pytest.approx(alone[0], abs=1e-4)
    assert together[0][1].log_prob == pytest.approx(alone[1], abs=1e-4)
    assert together[1].log_prob == pytest.approx(alone[2].log_prob, abs=1e-4)


def test_the_true_caption_outscores_a_caption_of_other_shapes(captioner, test_records):
    records = test_records[:16]
    true = [r.captions[0] for r in records]
    other = true[1:] + true[:1]  # each image with the next image's caption
    scores = captioner.score([r.path for r in records], [[t, o] for t, o in zip(true, other, strict=True)])
    wins = sum(pair[0].log_prob > pair[1].log_prob for pair in scores)
    assert wins >= 14  # a model that reads the image


def test_a_caption_longer_than_the_model_reads_and_a_count_mismatch_are_refused(captioner, test_images):
    with pytest.raises(ValueError, match="words; the model reads at most"):
        captioner.score(test_images[0], "a red circle " * 20)
    with pytest.raises(ValueError, match="2 images but captions for 1"):
        captioner.score(test_images[:2], ["a red circle"])
