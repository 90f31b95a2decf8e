"""Training steps with the image trunk's convolutions on channels-last maps (as `ImageEncoder` builds them) against
the same trunk on contiguous (NCHW) maps, measured in one run.

Two models: the hard shapes config's captioner (test_resnet at 128 px, output stride 16, batch 32 x 5 captions), and
a ResNet-50 trunk alone at 224 px (batch 8). Each round times one forward and backward of every variant in turn, so
that all of them meet the same machine load; the best round of each is kept.

    python benchmarks/channels_last_bench.py [--threads 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import yaml

from captioning.model import CaptioningModel, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def hard_shapes_step() -> tuple[Callable, Callable]:
    """A training step of configs/shapes_hard.yaml's model (60 words), channels-last trunk and contiguous trunk."""
    settings = yaml.safe_load((ROOT / "configs" / "shapes_hard.yaml").read_text())["model"]
    fields = {k: v for k, v in settings.items() if k in ModelConfig.__dataclass_fields__}
    torch.manual_seed(0)
    channels_last = CaptioningModel(ModelConfig(vocab_size=60, **fields)).train()
    contiguous = copy.deepcopy(channels_last)
    contiguous.encoder.to(memory_format=torch.contiguous_format)
    images, tokens = torch.randn(32, 3, 128, 128), torch.randint(4, 60, (160, 14))

    def step(model: CaptioningModel) -> Callable:
        def run() -> None:
            logits = model(images, tokens[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
            model.zero_grad(set_to_none=True)

        return run

    return step(channels_last), step(contiguous)


def resnet50_step() -> tuple[Callable, Callable]:
    """Forward and backward of a ResNet-50 trunk (random weights), channels-last and contiguous."""
    contiguous = timm.create_model("resnet50", num_classes=0).train()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 224, 224)

    def step(model: torch.nn.Module) -> Callable:
        def run() -> None:
            model.forward_features(images).mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    return step(channels_last), step(contiguous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"hard shapes captioner, test_resnet 128 px": hard_shapes_step, "resnet50 trunk, 224 px": resnet50_step}
    for name, build in models.items():
        steps = dict(zip(("channels_last", "contiguous"), build(), strict=True))
        best = dict.fromkeys(steps, float("inf"))
        for step in steps.values():  # warm-up
            step()
        for _ in range(args.rounds):
            for key, step in steps.items():
                started = time.perf_counter()
                step()
                best[key] = min(best[key], time.perf_counter() - started)
        print(
            f"{name}: channels-last {best['channels_last']:.3f} s, contiguous {best['contiguous']:.3f} s a step: "
            f"{best['contiguous'] / best['channels_last']:.2f}x ({args.threads} threads, torch {torch.__version__})"
        )


if __name__ == "__main__":
    main()
