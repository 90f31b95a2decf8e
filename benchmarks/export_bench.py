"""Images per second of captioning (greedy, or --beam-size K): exported ONNX graphs in onnxruntime against torch.

(a) torch: `CaptioningModel.encode` and `decode` with the KV cache (what `Captioner.caption` runs);
(b) onnxruntime: `OnnxCaptioner.stepper` under the same search code, on the graphs of `captioning export --format onnx`
    of the same weights.
Both take the same preprocessed photos, and every caption is forced to the same number of tokens (the end token is
banned until then), so both do the same work; the captions are checked to be identical, token for token.

    HF_HUB_OFFLINE=1 python benchmarks/export_bench.py [--images 32] [--batch-sizes 1 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from captioning.decoding import DecodeSpec, generate
from captioning.export import export_onnx
from captioning.model import CaptioningModel, ModelConfig
from captioning.model.generation import decode
from captioning.onnx_captioner import OnnxCaptioner
from captioning.text.tokenizer import CaptionTokenizer

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco-val2017-mini"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos captioned per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="images per call")
    parser.add_argument("--length", type=int, default=20, help="tokens generated per caption")
    parser.add_argument("--beam-size", type=int, default=1, help="beams per image (1: greedy)")
    parser.add_argument("--encoder", default="vit_tiny_patch16_224", help="timm encoder (random weights)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of measurement; each method's best is kept")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and of onnxruntime")
    return parser.parse_args()


def build(args: argparse.Namespace) -> tuple[CaptioningModel, CaptionTokenizer]:
    """A COCO-sized vocabulary from the photos' captions and a 3-block decoder of width 256 (random weights)."""
    from captioning.data.coco import load_coco_captions

    records = load_coco_captions(PHOTOS / "annotations" / "captions_val2017_subset159.json", PHOTOS / "val2017")
    tokenizer = CaptionTokenizer.train([c for r in records for c in r.captions], min_frequency=1)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        encoder=args.encoder,
        image_size=args.image_size,
        dim=256,
        depth=3,
        num_heads=4,
        max_length=args.length,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return CaptioningModel(config).eval(), tokenizer


def best_time(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations, onnxruntime's first-run graph work
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = build(args)
    paths = sorted((PHOTOS / "val2017").glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_onnx(model, tokenizer, folder)
        print(f"export: {time.perf_counter() - start:.1f} s ({args.encoder} at {args.image_size} px)")
        onnx_captioner = OnnxCaptioner(folder, threads=args.threads)
        images = np.stack([onnx_captioner.preprocess(path) for path in paths])  # (N, 3, S, S)
        tok = tokenizer
        spec = DecodeSpec.beams(args.beam_size, min_length=args.length, max_length=args.length)

        def torch_greedy(batch_size: int) -> list[list[int]]:
            rows = []
            with torch.no_grad():
                for i in range(0, len(images), batch_size):
                    memory = model.encode(torch.from_numpy(images[i : i + batch_size]))
                    rows += decode(model.decoder, memory, spec, tok).tokens.tolist()
            return rows

        def onnx_greedy(batch_size: int) -> list[list[int]]:
            rows = []
            for i in range(0, len(images), batch_size):
                rows += generate(onnx_captioner.stepper(images[i : i + batch_size]), spec, tok).tokens.tolist()
            return rows

        print(f"{len(images)} photos, {args.length} tokens each, {args.threads} thread(s), best of {args.repeats}")
        for batch_size in args.batch_sizes:
            same = torch_greedy(batch_size) == onnx_greedy(batch_size)
            seconds_torch = best_time(lambda b=batch_size: torch_greedy(b), args.repeats)
            seconds_onnx = best_time(lambda b=batch_size: onnx_greedy(b), args.repeats)
            print(
                f"batch {batch_size:>3}: torch {len(images) / seconds_torch:7.1f} images/s, "
                f"onnxruntime {len(images) / seconds_onnx:7.1f} images/s, "
                f"onnxruntime / torch = {seconds_torch / seconds_onnx:.2f}x; identical captions: {same}"
            )


if __name__ == "__main__":
    main()
