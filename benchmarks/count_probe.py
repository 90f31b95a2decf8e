"""Does a hard-shapes model know how many of each group there are, and does decoding write what it knows?

On the test split of the hard shapes data (`configs/shapes_hard.yaml`), for a checkpoint:
- grounded accuracy of greedy captions, and of 3 and 10 beams;
- a count foil, teacher-forced: for every two groups of a scene with different counts, the plain listing of the scene
  ("two green triangles and a red circle.") against the same listing with the two counts swapped ("a green triangle
  and two red circles."), same words, same total; the share where the true one scores higher;
- for each greedy caption that is wrong, whether some true listing (any order of the groups) scores higher than it
  (the search missed it) or not (the model prefers its error).

    HF_HUB_OFFLINE=1 python benchmarks/count_probe.py runs/shapes_hard/version_0/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import torch

from captioning import Captioner
from captioning.data.shapes_hard import caption_matches_scene, grounded_accuracy, group_phrase, groups_of


def listing(groups: list[dict], counts: list[int]) -> str:
    """The groups with these counts, as the plain template lists them: "two green triangles and a red circle."."""
    phrases = [group_phrase({**g, "count": n}, with_size=False) for g, n in zip(groups, counts, strict=True)]
    return (f"{', '.join(phrases[:-1])} and {phrases[-1]}" if len(phrases) > 1 else phrases[0]) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="data/shapes_hard", type=Path, help="the hard shapes data's root")
    parser.add_argument("--threads", default=1, type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    images = json.loads((args.data / "annotations" / "captions_test.json").read_text())["images"]
    paths = [str(args.data / "test" / image["file_name"]) for image in images]
    scenes = {image["id"]: image["scene"] for image in images}

    greedy = captioner.caption(paths, beam_size=1)
    for beams, captions in [(1, greedy), *((k, captioner.caption(paths, beam_size=k)) for k in (3, 10))]:
        accuracy = grounded_accuracy({image["id"]: c.text for image, c in zip(images, captions, strict=True)}, scenes)
        print(f"grounded accuracy, {beams:>2} beam(s): {accuracy:.3f}")

    foil, errors = Counter(), Counter()
    for image, path, caption in zip(images, paths, greedy, strict=True):
        groups = groups_of(image["scene"])
        counts = [g["count"] for g in groups]
        for i, j in itertools.combinations(range(len(groups)), 2):
            if counts[i] != counts[j]:
                swapped = counts.copy()
                swapped[i], swapped[j] = counts[j], counts[i]
                true, false = captioner.score(path, [listing(groups, counts), listing(groups, swapped)])
                foil["right"] += true.log_prob > false.log_prob
                foil["pairs"] += 1
        if not caption_matches_scene(caption.text, image["scene"]):
            truths = [listing(list(order), [g["count"] for g in order]) for order in itertools.permutations(groups)]
            *true_scores, own = captioner.score(path, [*truths, caption.text])
            errors["search" if max(s.log_prob for s in true_scores) > own.log_prob else "model"] += 1
    print(f"count foil (two groups' counts swapped): {foil['right'] / foil['pairs']:.3f} of {foil['pairs']} pairs")
    print(f"wrong greedy captions: {errors['search']} with a true listing scored higher, {errors['model']} without")


if __name__ == "__main__":
    main()
