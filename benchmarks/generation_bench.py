"""Captions per second of beam search (beam 3): our KV-cached decoder against two baselines, measured in one run.

(a) ours: self-attention keys and values cached, the memory's cross-attention K, V projected once per image and
    shared by its beams (beam search with a length penalty, Wu et al., 2016);
(b) the same model and the same search, recomputing every position and the memory's K, V at every step;
(c) a Hugging Face VisionEncoderDecoderModel of matched size (ViT encoder, BERT decoder with cross-attention,
    random weights) decoding with `generate(num_beams=3)`; skipped with a note when transformers is not installed.
Every caption is forced to the same number of tokens (no end token before it), so all three do the same work.

    HF_HUB_OFFLINE=1 python benchmarks/generation_bench.py [--images 64] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from captioning.decoding import DecodeSpec, TokenIds
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import decode as decode_captions

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco-val2017-mini" / "val2017"
BOS, EOS, PAD = 1, 2, 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images captioned per measurement")
    parser.add_argument("--batch-size", type=int, default=32, help="images per generate call")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--length", type=int, default=20, help="tokens generated per caption")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="about a COCO word vocabulary")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of measurement; each method's best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def load_images(count: int, device: str) -> torch.Tensor:
    """The first `count` real photos, preprocessed for the ViT (random pixels if the shared data is absent)."""
    from captioning.data.transforms import build_transform, load_image

    paths = sorted(PHOTOS.glob("*.jpg"))[:count] if PHOTOS.is_dir() else []
    if len(paths) < count:
        print(f"note: {PHOTOS} has {len(paths)} photos; using random pixels")
        return torch.randn(count, 3, 224, 224, device=device)
    transform = build_transform("vit_tiny_patch16_224", 224)
    return torch.stack([transform(load_image(path)) for path in paths]).to(device)  # (N, 3, 224, 224)


def build_ours(args: argparse.Namespace) -> CaptioningModel:
    """ViT-Tiny/16 at 224 px (5.5M parameters), a 3-block decoder of width 256 with 4 heads."""
    config = ModelConfig(
        vocab_size=args.vocab_size,
        encoder="vit_tiny_patch16_224",
        image_size=224,
        dim=256,
        depth=3,
        num_heads=4,
        max_length=args.length,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return CaptioningModel(config).eval().to(args.device)


def build_hf(args: argparse.Namespace):
    """The same shape in Hugging Face classes: ViT-Tiny/16 and a 3-layer BERT decoder with cross-attention."""
    from transformers import BertConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    encoder = ViTConfig(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=224
    )
    decoder = BertConfig(
        vocab_size=args.vocab_size,
        hidden_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=args.length + 1,
        is_decoder=True,
        add_cross_attention=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    torch.manual_seed(0)
    return VisionEncoderDecoderModel(config=config).eval().to(args.device)


def run_once(caption_batch: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, args) -> float:
    """Seconds to caption all images, batch by batch."""
    start = time.perf_counter()
    for first in range(0, len(images), args.batch_size):
        tokens = caption_batch(images[first : first + args.batch_size])
        assert tokens.size(1) >= args.length, tokens.shape  # every caption has the forced length
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(methods: dict[str, tuple[str, Callable]], images: torch.Tensor, args) -> dict[str, float]:
    """Captions per second of each method: the best of `repeats` rounds, each round running every method once in
    turn, so that all of them meet the same load on a shared machine (after one warm-up batch each)."""
    best = dict.fromkeys(methods, float("inf"))
    with torch.inference_mode():
        for _, caption_batch in methods.values():
            caption_batch(images[: args.batch_size])
        for _ in range(args.repeats):
            for key, (_, caption_batch) in methods.items():
                best[key] = min(best[key], run_once(caption_batch, images, args))
    for key, (name, _) in methods.items():
        rate = len(images) / best[key]
        print(f"{name:<58s} {rate:8.1f} captions/s  ({best[key]:6.2f} s for {len(images)} images)")
    return {key: len(images) / seconds for key, seconds in best.items()}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.images, args.device)
    ours = build_ours(args)
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"beam {args.beam_size}, {args.length} tokens per caption, vocabulary {args.vocab_size}, {args.images} images "
        f"in batches of {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"ours: timm vit_tiny_patch16_224 + 3-block decoder (dim 256), {params / 1e6:.1f}M parameters")

    def decode(use_cache: bool, include_greedy: bool = True):
        def caption_batch(batch: torch.Tensor) -> torch.Tensor:
            memory = ours.encode(batch)  # (B, M, D)
            options = dict(beam_size=args.beam_size, min_length=args.length, include_greedy=include_greedy)
            spec = DecodeSpec(max_length=args.length, **options)
            return decode_captions(ours.decoder, memory, spec, TokenIds(BOS, EOS, PAD), use_cache=use_cache).tokens

        return caption_batch

    methods = {
        "a": ("(a) ours, cached (beams + greedy candidate, the default)", decode(True)),
        "a0": ("(a') ours, cached, textbook beam search", decode(True, False)),
        "b": ("(b) ours, recomputing every step", decode(False)),
    }
    try:
        hf = build_hf(args)
    except ImportError:
        print("(c) skipped: transformers is not installed (pip install transformers, for this benchmark only)")
    else:
        hf_params = sum(p.numel() for p in hf.parameters())
        print(f"hf: ViTModel + BertLMHeadModel (dim 256, 3 layers), {hf_params / 1e6:.1f}M parameters")

        def hf_batch(batch: torch.Tensor) -> torch.Tensor:
            return hf.generate(
                pixel_values=batch,
                num_beams=args.beam_size,
                max_new_tokens=args.length,
                min_new_tokens=args.length,
                do_sample=False,
            )

        methods["c"] = ("(c) Hugging Face VisionEncoderDecoderModel.generate", hf_batch)
    rates = measure(methods, images, args)
    print(f"ratio (a)/(b) = {rates['a'] / rates['b']:.2f}x   (a')/(b) = {rates['a0'] / rates['b']:.2f}x")
    if "c" in rates:
        print(f"ratio (a)/(c) = {rates['a'] / rates['c']:.2f}x   (a')/(c) = {rates['a0'] / rates['c']:.2f}x")


if __name__ == "__main__":
    main()
