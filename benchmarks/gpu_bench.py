"""Training speed on a GPU: ViT-B/16 with the COCO decoder in bf16, eager and torch.compile'd, and the data loader.

One command on a CUDA machine; for each variant it prints images/s, the model FLOP utilisation (MFU: FLOPs of the
step, counted with torch.utils.flop_counter, per second, against the GPU's dense bf16 peak and against a large bf16
matmul measured here for at least a second), the peak memory, and what the step asks of the host (syncs and aten calls
of one eager step, graph breaks and recompiles of the compiled one); then the images/s of the data loader in its
steady state (draft JPEG decoding, one resize, 8-bit pixels) with the machine's cores as workers, on photos generated
here (or `--photos DIR`). A variant that fails to compile is reported, and the eager figures still print.

    python benchmarks/gpu_bench.py                              # cuda, 300 steps, batch 64 x 5 captions
    python benchmarks/gpu_bench.py --device cpu --steps 1 --warmup 1 --batch-size 2 --loader-batches 4   # smoke check
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.step_audit import OpCounter  # noqa: E402
from captioning.data.transforms import build_transform, load_image  # noqa: E402
from captioning.model import CaptioningModel, ModelConfig  # noqa: E402
from captioning.text.packing import PackedRows, pack_captions  # noqa: E402
from captioning.training.nonfinite import NonFiniteGuard  # noqa: E402
from captioning.training.optim import use_fused_kernel  # noqa: E402

BOS, EOS, PAD = 1, 2, 0
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by the exact name that
# torch.cuda.get_device_name reports: the H100's PCIe and NVL parts are not the SXM part. Others: --peak-tflops.
BF16_PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.1,
    "NVIDIA L4": 121.0,
    "NVIDIA A10G": 70.0,
    "NVIDIA GeForce RTX 4090": 165.2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--loader-batches", type=int, default=50, help="batches timed in the loader's steady state")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of JPEGs (default: generated photos)")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> CaptioningModel:
    """ViT-B/16 at 224 px and the decoder of configs/coco.yaml (6 blocks, 512 wide, 8 heads)."""
    config = ModelConfig(
        vocab_size=args.vocab_size, encoder=args.encoder, image_size=224, dim=512, depth=6, num_heads=8, dropout=0.1
    )
    torch.manual_seed(0)
    return CaptioningModel(config).to(args.device).train()


def random_batch(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """8-bit images (B, 3, 224, 224), as the loader hands them over, and captions of COCO-like lengths (8 to 16
    words) packed as the training collate packs them: each image's K captions back to back in one row."""
    generator = torch.Generator().manual_seed(0)
    rows = args.batch_size * args.captions
    lengths = torch.randint(8, 17, (rows,), generator=generator)
    tokens = torch.randint(4, args.vocab_size, (rows, int(lengths.max()) + 2), generator=generator)
    tokens[:, 0] = BOS
    positions = torch.arange(tokens.size(1))
    tokens[positions[None] == lengths[:, None] + 1] = EOS
    tokens[positions[None] > lengths[:, None] + 1] = PAD
    images = torch.randint(0, 256, (args.batch_size, 3, 224, 224), generator=generator, dtype=torch.uint8)
    packed = pack_captions(tokens, args.captions, PAD)  # "inputs", "targets", "positions", "segments"
    return images.to(args.device), {key: value.to(args.device) for key, value in packed.items()}


def train_step(model: CaptioningModel, optimizer: torch.optim.Optimizer, device: str):
    """The XE step as captioning.training.module runs it under configs/coco.yaml, in bf16 autocast: packed captions,
    fixed shapes (padding left out by ignore_index), the non-finite guard, clipping to norm 1.0 with the guard's
    norm, fused AdamW."""
    guard = NonFiniteGuard(limit=20)

    def step(images: torch.Tensor, captions: dict[str, torch.Tensor]) -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            memory = model.encode(images)
            logits = model.decoder(captions["inputs"], memory, packing=PackedRows.of(captions))  # (B, T, V)
        targets = captions["targets"].flatten()
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=PAD, label_smoothing=0.1)
        guard.observe_loss(loss)
        loss.backward()
        guard.check(optimizer)
        guard.clip(optimizer, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # the benchmarked one, not the current one


def bf16_matmul_tflops(device: str, seconds: float = 1.0) -> float:
    """Achieved TFLOP/s of a large bf16 matmul over at least `seconds`: what this device really reaches once its
    clocks have settled (a few matmuls of 30 ms catch it on its way up)."""
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    synchronize(device)
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):  # enough queued work between host checks
            a @ b
        synchronize(device)
        repeats += 10
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def datasheet_peak(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not args.device.startswith("cuda"):
        return None
    return peak_for(torch.cuda.get_device_name(torch.device(args.device)))


def peak_for(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a device by its exact name, None when it is not listed."""
    return BF16_PEAK_TFLOPS.get(device_name.strip())


def host_counts(step, batch) -> str:
    """Host syncs and aten calls of one eager step (see benchmarks/step_audit.py)."""
    counter = OpCounter()
    with counter:
        step(*batch)
    return f"{counter.syncs} host syncs, {counter.mask_indexings} mask indexings, {counter.calls} aten calls per step"


def run_variant(args: argparse.Namespace, compiled: bool, batch, measured_peak: float, peak: float | None) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = build_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    use_fused_kernel(optimizer)
    step = train_step(model, optimizer, args.device)
    counter = FlopCounterMode(display=False)
    with counter:  # eager, before any compilation: the FLOPs of the model, not of a particular kernel choice
        step(*batch)
    flops = counter.get_total_flops()
    audit = host_counts(step, batch) if not compiled else ""
    if compiled:
        torch._dynamo.reset()
        counters.clear()
        model.compile_parts()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
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
    if compiled:
        audit = f"{sum(counters['graph_break'].values())} graph breaks, {counters['frames']['ok']} frames compiled"
    achieved = flops / seconds / 1e12
    cuda = args.device.startswith("cuda")
    memory = f"{torch.cuda.max_memory_allocated(args.device) / 2**30:.1f} GiB" if cuda else "n/a"
    mfu = f"MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "MFU n/a (no data-sheet peak: --peak-tflops)"
    print(
        f"{'compiled' if compiled else 'eager':<9} {args.batch_size / seconds:8.1f} images/s  "
        f"{flops / 1e12:6.2f} TFLOP/step  {achieved:7.2f} TFLOP/s  {mfu}, {achieved / measured_peak:.1%} of the "
        f"measured matmul  peak memory {memory}  (warm-up {warmup_seconds:.0f} s)  {audit}"
    )
    del model, optimizer


def generate_photos(folder: Path, count: int = 64, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (640 x 480, smooth colour fields with texture and noise), so the bench needs no data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640] / 480.0
    paths = []
    for index in range(count):
        waves = [np.sin(x * rng.uniform(1, 12) + y * rng.uniform(1, 12) + rng.uniform(0, 6)) for _ in range(3)]
        pixels = np.stack(waves, axis=-1) * 80 + 128 + rng.normal(0, 12, (480, 640, 3))
        path = folder / f"photo_{index:03d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


class PhotoDataset(Dataset):
    """The photos, repeated to `length` items, as training reads them: draft decode, one resize, 8-bit pixels."""

    def __init__(self, paths: list[Path], length: int, encoder: str) -> None:
        self.paths, self.length = paths, length
        self.transform = build_transform(encoder, 224, train=True, augment=True, uint8=True)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index % len(self.paths)]
        return self.transform(load_image(path, size=self.transform.decode_size))


def loader_rate(args: argparse.Namespace, paths: list[Path]) -> None:
    """Images/s of the loader in its steady state: the batches that its workers prefetched while starting are drawn
    first and not timed (they would count the start-up's work as free)."""
    random.Random(0).shuffle(paths)
    prefetch = 4 if args.workers else None
    untimed = max(1, args.workers * (prefetch or 0)) + 1
    dataset = PhotoDataset(paths, args.batch_size * (untimed + args.loader_batches), args.encoder)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
        persistent_workers=False, prefetch_factor=prefetch,
    )  # fmt: skip
    iterator = iter(loader)
    for _ in range(untimed):
        next(iterator)
    started, count = time.perf_counter(), 0
    for images in iterator:
        count += images.size(0)
    seconds = time.perf_counter() - started
    print(
        f"data loader: {count / seconds:8.1f} images/s with {args.workers} workers "
        f"({count / seconds / max(1, args.workers):.0f} per worker), batch {args.batch_size}, augmenting crops, "
        f"{images.dtype} pixels, {args.loader_batches} batches after {untimed} untimed"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a smoke check")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    measured_peak = bf16_matmul_tflops(args.device)
    peak = datasheet_peak(args)
    if args.device.startswith("cuda") and peak is None:
        print(f"note: no data-sheet peak for '{name}': pass --peak-tflops for MFU")
    print(
        f"{name}, torch {torch.__version__}, {args.encoder} at 224 px + 6x512 decoder, batch {args.batch_size} x "
        f"{args.captions} captions, packed, bf16 autocast, guard and clipping, fused AdamW, {args.steps} steps; "
        f"bf16 matmul measured {measured_peak:.1f} TFLOP/s" + (f", data sheet {peak:.0f}" if peak else "")
    )
    batch = random_batch(args)
    for compiled in {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]:
        try:
            run_variant(args, compiled, batch, measured_peak, peak)
        except Exception as error:  # e.g. no C++ compiler, or an inductor bug: the other figures still count
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"{'compiled' if compiled else 'eager':<9} failed: {type(error).__name__}: {message}")
    with tempfile.TemporaryDirectory() as folder:
        paths = sorted(args.photos.glob("*.jpg")) if args.photos else generate_photos(Path(folder))
        if not paths:
            print(f"data loader: skipped, no JPEGs in {args.photos}")
            return
        loader_rate(args, paths)


if __name__ == "__main__":
    main()
