"""Training speed on a GPU: ViT-B/16 with the COCO decoder in bf16, eager and torch.compile'd, and the data loader.

One command on a CUDA machine; for each variant it prints images/s, the model FLOP utilisation (MFU: FLOPs of the
step, counted with torch.utils.flop_counter, per second, against the GPU's dense bf16 peak and against a large bf16
matmul measured here), and the peak memory; then the images/s of the data loader (draft JPEG decoding, one resize)
with the machine's cores as workers, on the real COCO photos of ../shared/data.

    python benchmarks/gpu_bench.py                              # cuda, 300 steps, batch 64 x 5 captions
    python benchmarks/gpu_bench.py --device cpu --steps 3 --batch-size 2 --compile off   # a smoke check anywhere
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from captioning.data.transforms import build_transform, load_image
from captioning.model import CaptioningModel, ModelConfig
from captioning.training.optim import use_fused_kernel

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco-val2017-mini" / "val2017"
BOS, EOS, PAD = 1, 2, 0
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by a part of the device name.
BF16_PEAK_TFLOPS = {
    "H200": 989,
    "H100": 989,
    "GH200": 989,
    "A100": 312,
    "L40S": 362,
    "L4": 121,
    "A10G": 70,
    "4090": 165,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step, as configs/coco.yaml")
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--encoder", default="vit_base_patch16_224")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both", help="variants to run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not listed")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="data loader processes")
    parser.add_argument("--loader-batches", type=int, default=50, help="batches read to time the loader")
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> CaptioningModel:
    """ViT-B/16 at 224 px and the decoder of configs/coco.yaml (6 blocks, 512 wide, 8 heads)."""
    config = ModelConfig(
        vocab_size=args.vocab_size, encoder=args.encoder, image_size=224, dim=512, depth=6, num_heads=8, dropout=0.1
    )
    torch.manual_seed(0)
    return CaptioningModel(config).to(args.device).train()


def random_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, 224, 224) and tokens (B*K, T+1) with COCO-like caption lengths (8 to 16 words), padded."""
    generator = torch.Generator().manual_seed(0)
    rows = args.batch_size * args.captions
    lengths = torch.randint(8, 17, (rows,), generator=generator)
    tokens = torch.randint(4, args.vocab_size, (rows, int(lengths.max()) + 2), generator=generator)
    tokens[:, 0] = BOS
    positions = torch.arange(tokens.size(1))
    tokens[positions[None] == lengths[:, None] + 1] = EOS
    tokens[positions[None] > lengths[:, None] + 1] = PAD
    images = torch.randn(args.batch_size, 3, 224, 224, generator=generator)
    return images.to(args.device), tokens.to(args.device)


def train_step(model: CaptioningModel, optimizer: torch.optim.Optimizer, device: str):
    """The XE step of captioning.training.module in bf16 autocast: LM head and loss at real positions only."""

    def step(images: torch.Tensor, tokens: torch.Tensor) -> None:
        targets = tokens[:, 1:]
        real = targets != PAD
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            logits = model(images, tokens[:, :-1], mask=real)  # (N, V)
        loss = F.cross_entropy(logits.float(), targets[real], label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bf16_matmul_tflops(device: str, n: int = 8192) -> float:
    """Achieved TFLOP/s of a large bf16 matmul: what this GPU really reaches."""
    if not device.startswith("cuda"):
        n = 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    synchronize(device)
    repeats = 20 if device.startswith("cuda") else 2
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def datasheet_peak(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not args.device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(args.device))
    return next((peak for part, peak in BF16_PEAK_TFLOPS.items() if part in name), None)


def run_variant(args: argparse.Namespace, compiled: bool, batch, measured_peak: float, peak: float | None) -> None:
    model = build_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    use_fused_kernel(optimizer)
    step = train_step(model, optimizer, args.device)
    counter = FlopCounterMode(display=False)
    with counter:  # eager, before any compilation: the FLOPs of the model, not of a particular kernel choice
        step(*batch)
    flops = counter.get_total_flops()
    if compiled:
        model.compile_parts()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step(*batch)
    synchronize(args.device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        step(*batch)
    synchronize(args.device)
    seconds = (time.perf_counter() - started) / args.steps
    achieved = flops / seconds / 1e12
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith("cuda") else "n/a"
    mfu = f"MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "MFU n/a (no data-sheet peak: --peak-tflops)"
    print(
        f"{'compiled' if compiled else 'eager':<9} {args.batch_size / seconds:8.1f} images/s  "
        f"{flops / 1e12:6.2f} TFLOP/step  {achieved:7.2f} TFLOP/s  {mfu}, {achieved / measured_peak:.1%} of the "
        f"measured matmul  peak memory {memory}  (warm-up {warmup_seconds:.0f} s)"
    )
    del model, optimizer


class PhotoDataset(Dataset):
    """The real photos, repeated to `length` items, as training reads them: draft decode, one resize."""

    def __init__(self, paths: list[Path], length: int, encoder: str) -> None:
        self.paths, self.length = paths, length
        self.transform = build_transform(encoder, 224, train=True, augment=True)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index % len(self.paths)]
        return self.transform(load_image(path, size=self.transform.decode_size))


def loader_rate(args: argparse.Namespace) -> None:
    paths = sorted(PHOTOS.glob("*.jpg"))
    if not paths:
        print(f"data loader: skipped, no photos in {PHOTOS}")
        return
    random.Random(0).shuffle(paths)
    dataset = PhotoDataset(paths, args.batch_size * args.loader_batches, args.encoder)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
        persistent_workers=False, prefetch_factor=4 if args.workers else None,
    )  # fmt: skip
    iterator = iter(loader)
    next(iterator)  # workers started, first batch in
    started, count = time.perf_counter(), 0
    for images in iterator:
        count += images.size(0)
    seconds = time.perf_counter() - started
    print(
        f"data loader: {count / seconds:8.1f} images/s with {args.workers} workers "
        f"({count / seconds / max(1, args.workers):.0f} per worker), batch {args.batch_size}, augmenting crops"
    )


def main() -> None:
    args = parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a smoke check")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    measured_peak = bf16_matmul_tflops(args.device)
    peak = datasheet_peak(args)
    print(
        f"{name}, torch {torch.__version__}, {args.encoder} at 224 px + 6x512 decoder, batch {args.batch_size} x "
        f"{args.captions} captions, bf16 autocast, fused AdamW, {args.steps} steps; bf16 matmul measured "
        f"{measured_peak:.1f} TFLOP/s" + (f", data sheet {peak:.0f}" if peak else "")
    )
    batch = random_batch(args)
    for compiled in {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]:
        run_variant(args, compiled, batch, measured_peak, peak)
    loader_rate(args)


if __name__ == "__main__":
    main()
