"""Training images per second of our step against the Hugging Face VisionEncoderDecoder peer, measured in one run.

All at one size: ViT-S/16 at 224 px, a 6-layer decoder 512 wide (8 heads, MLP 2048), a 10,000-word vocabulary,
B images x K captions per step (real COCO photos, caption lengths of their real captions), captions padded to the
longest of their batch, fp32, dropout 0.1 in the decoders (`--dropout`). Every side updates as its trainer does:
gradients clipped to norm 1.0 (our configs' `gradient_clip_val`; the HF Trainer's default `max_grad_norm`), then fused
AdamW; ours also runs its non-finite guard, whose gradient norm the clipping reuses, its factor applied inside fused
AdamW (see `captioning.training.nonfinite`).
(a) ours as it trains: each image encoded once, its K captions packed back to back in one row per image (packed by
    the collate, on the host: see `captioning.text.packing`); the LM head and the loss at every position, padding
    left out by `ignore_index` (fixed shapes: no host sync, no graph break); label smoothing 0.1;
(b) ours with the LM head and the loss only at real positions (a boolean mask: fewer FLOPs, but a host sync);
(c) HF as its Trainer runs it: VisionEncoderDecoderModel (ViTModel + BertLMHeadModel with cross-attention), the
    pixels repeated per caption, `labels` with -100 at padding, fused AdamW (`TrainingArguments.optim` defaults to
    "adamw_torch_fused" since torch 2.8);
(d) HF fed each image once: the encoder runs on the B images, its states are repeated per caption.
With `--compile`, each model is torch.compile'd (ours with `compile_parts`, HF's as a whole) and measured again.
Eager, each side's image encoder is also timed alone (forward and backward), and (a) against (d) without it.
(c) and (d) are skipped with a note when transformers is not installed. FLOPs of one step (forward and backward) are
counted with torch.utils.flop_counter.FlopCounterMode; the fp32 matmul peak is a large matmul in the same process.
Each round runs every method in turn, in a new random order: the ratios come from each method's best round, and also
paired within each round (median and range), which a machine whose speed drifts between rounds disturbs less.

    HF_HUB_OFFLINE=1 python benchmarks/train_bench.py [--threads 2] [--steps 3] [--repeats 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from captioning.model import CaptioningModel, ModelConfig
from captioning.text.packing import PackedRows, pack_captions
from captioning.training.nonfinite import NonFiniteGuard, gradient_norm
from captioning.training.optim import use_fused_kernel

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "data" / "coco-val2017-mini"
BOS, EOS, PAD = 1, 2, 0
SIZE = dict(encoder="vit_small_patch16_224", image_size=224, dim=512, depth=6, num_heads=8, mlp_ratio=4.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="B, images per step")
    parser.add_argument("--captions", type=int, default=5, help="K, captions per image")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="about a COCO word vocabulary")
    parser.add_argument("--max-length", type=int, default=24, help="caption positions, end token included")
    parser.add_argument(
        "--dropout", type=float, default=0.1,
        help="the decoders' dropout, as each side trains: configs/coco.yaml's, and BertConfig's default (hidden and "
        "attention); the encoders have none on both sides (timm's and ViTConfig's defaults)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=8, help="rounds; each method's best is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-hf", action="store_true", help="measure ours only")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (needs a C++ compiler)")
    return parser.parse_args()


def make_batches(args: argparse.Namespace, count: int = 4) -> list[dict[str, torch.Tensor]]:
    """`count` batches of "images" (B, 3, 224, 224), "tokens" (B*K, T+1) `[BOS] w.. [EOS] [PAD]..`, and the same
    captions packed as our collate hands them over ("inputs", "targets", "positions", "segments", one row per image).

    Real photos through our data pipeline, and word ids drawn at random in captions as long as their real COCO
    captions (random pixels and lengths if the shared data is absent).
    """
    from captioning.data.transforms import build_transform, load_image

    rng = random.Random(0)
    paths = sorted((COCO / "val2017").glob("*.jpg"))
    annotations = COCO / "annotations" / "captions_val2017_subset159.json"
    lengths = [len(a["caption"].split()) for a in json.loads(annotations.read_text())["annotations"]] if paths else []
    if not paths:
        print(f"note: {COCO} not found; random pixels and caption lengths")
    transform = build_transform(SIZE["encoder"], SIZE["image_size"])
    B, K = args.images, args.captions
    batches = []
    for index in range(count):
        if paths:
            chosen = paths[index * B : (index + 1) * B]
            images = torch.stack([transform(load_image(p, size=transform.decode_size)) for p in chosen])
        else:
            images = torch.randn(B, 3, 224, 224)
        rows = []
        for _ in range(B * K):
            words = min(rng.choice(lengths) if lengths else rng.randint(8, 16), args.max_length - 1)
            rows.append([BOS, *(rng.randrange(4, args.vocab_size) for _ in range(words)), EOS])
        width = max(len(row) for row in rows)  # padded to the longest caption of the batch, as our collate does
        tokens = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
        batch = {"images": images, "tokens": tokens, **pack_captions(tokens, K, PAD)}
        batches.append({key: value.to(args.device) for key, value in batch.items()})
    return batches


def build_ours(args: argparse.Namespace) -> CaptioningModel:
    config = ModelConfig(vocab_size=args.vocab_size, max_length=args.max_length, dropout=args.dropout, **SIZE)
    torch.manual_seed(0)
    return CaptioningModel(config).to(args.device).train()


class UpdateClock:
    """Seconds spent in the update (clipping, our guard, the optimizer step), per method: part of the step, and
    reported on its own."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def step(self, key: str, optimizer: torch.optim.Optimizer, clip: Callable[[], object]) -> None:
        started = time.perf_counter()
        clip()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started


CLOCK = UpdateClock()
MAX_NORM = 1.0  # gradient clipping: `gradient_clip_val` in our configs, `max_grad_norm` in the HF Trainer's defaults


def ours_step(model: CaptioningModel, optimizer: torch.optim.Optimizer, lean: bool, key: str) -> Callable:
    """One XE training step of our model: as it trains (fixed shapes), or `lean`, the head at real positions only.
    The update as our module runs it: the non-finite guard's check, clipping with its norm, fused AdamW."""
    guard = NonFiniteGuard(limit=20)

    def update() -> None:
        guard.check(optimizer)
        guard.clip(optimizer, MAX_NORM)

    def step(batch: dict[str, torch.Tensor]) -> None:
        memory, packing, targets = model.encode(batch["images"]), PackedRows.of(batch), batch["targets"]
        if lean:
            real = targets != PAD
            logits = model.decoder(batch["inputs"], memory, mask=real, packing=packing)  # (N, V) at the real positions
            loss = F.cross_entropy(logits.float(), targets[real], label_smoothing=0.1)
        else:
            logits = model.decoder(batch["inputs"], memory, packing=packing)  # (B, T, V), one image per row
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, label_smoothing=0.1
            )
        guard.observe_loss(loss)
        loss.backward()
        CLOCK.step(key, optimizer, update)

    return step


def fused_adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with torch's fused kernel, for every model alike."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    use_fused_kernel(optimizer)
    return optimizer


def build_hf(args: argparse.Namespace):
    """The same size in Hugging Face classes: ViT-S/16 (ViTModel) and a 6-layer BERT decoder with cross-attention."""
    from transformers import BertConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    encoder = ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224
    )
    decoder = BertConfig(
        vocab_size=args.vocab_size,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=args.max_length + 1,
        is_decoder=True,
        add_cross_attention=True,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    torch.manual_seed(0)
    return VisionEncoderDecoderModel(config=config).to(args.device).train()


def hf_step(model, optimizer: torch.optim.Optimizer, captions: int, encode_once: bool, key: str) -> Callable:
    """One training step of the HF model: pixels repeated per caption (as people run it), or encoded once."""
    from transformers.modeling_outputs import BaseModelOutput

    def step(batch: dict[str, torch.Tensor]) -> None:
        images, tokens = batch["images"], batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        labels = targets.masked_fill(targets == PAD, -100)
        mask = (inputs != PAD).long()
        if encode_once:
            states = model.encoder(pixel_values=images).last_hidden_state  # (B, M, C)
            states = states.repeat_interleave(captions, dim=0)  # (B*K, M, C)
            output = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), decoder_input_ids=inputs,
                           decoder_attention_mask=mask, labels=labels)  # fmt: skip
        else:
            pixels = images.repeat_interleave(captions, dim=0)  # (B*K, 3, H, W): one copy per caption
            output = model(pixel_values=pixels, decoder_input_ids=inputs, decoder_attention_mask=mask, labels=labels)
        output.loss.backward()
        CLOCK.step(key, optimizer, lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM))

    return step


def encoder_pass(encode: Callable, model: torch.nn.Module) -> Callable:
    """The image encoder's forward and backward alone, its gradients dropped: the part that (a) and (d) share."""

    def step(batch: dict[str, torch.Tensor]) -> None:
        encode(batch["images"]).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def guard_and_clipping(model: torch.nn.Module, repeats: int = 10) -> str:
    """Best milliseconds of the guard and clipping over gradients of `model`'s shapes: one L2 norm that both use, the
    factor handed to fused AdamW (as now), against the largest magnitude for the guard and torch's `clip_grad_norm_`
    for clipping (as before)."""
    params = [torch.nn.Parameter(torch.empty_like(p)) for p in model.parameters()]
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3

    def best(work: Callable[[], object]) -> float:
        seconds = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            seconds = min(seconds, time.perf_counter() - started)
        return seconds * 1e3

    grads = [p.grad for p in params]
    norm = best(lambda: gradient_norm(grads))
    largest = best(lambda: torch.stack(torch._foreach_norm(grads, float("inf"))).amax())
    clip = best(lambda: torch.nn.utils.clip_grad_norm_(params, 1e9))
    return (
        f"guard and clipping over {len(params)} gradients: one L2 norm {norm:.0f} ms, against the largest magnitude "
        f"{largest:.0f} ms + clip_grad_norm_ {clip:.0f} ms = {largest + clip:.0f} ms ({(largest + clip) / norm:.1f}x)"
    )


def step_flops(step: Callable, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one step's forward and backward (the optimizer's elementwise update is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return counter.get_total_flops()


def matmul_peak(device: str, n: int = 2048, seconds: float = 3.0) -> float:
    """fp32 GFLOP/s of an n x n matmul with the threads in use: the rate these CPUs can reach. The best of as many
    matmuls as fit in `seconds`: a virtual CPU may take a second or more to reach its full clock."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def measure(steps: dict[str, Callable], batches: list, args: argparse.Namespace) -> tuple[dict, ...]:
    """Best seconds per step of each method, the update's seconds in that best round, the best CPU seconds, and every
    round's seconds; rounds run every method in turn (in a shuffled order), so that all of them meet the same load."""
    best = dict.fromkeys(steps, float("inf"))
    rounds: dict[str, list[float]] = {key: [] for key in steps}
    update_seconds = dict.fromkeys(steps, 0.0)
    cpu = dict.fromkeys(steps, float("inf"))  # CPU seconds of this process per step: robust to other processes
    measured = [batches[index % len(batches)] for index in range(args.steps)]
    for step in steps.values():  # warm-up on every batch measured: allocator, optimizer state, a compiled step's
        for batch in measured:  # recompile for a second caption width (then dynamic), first-call costs
            step(batch)
    order = random.Random(0)
    for _ in range(args.repeats):
        # A new order each round: a load on the machine that comes back with the round's period (another process
        # doing the same) would otherwise fall on the same method every round.
        for key in order.sample(list(steps), len(steps)):
            step = steps[key]
            CLOCK.seconds[key] = 0.0
            started, cpu_started = time.perf_counter(), time.process_time()
            for batch in measured:
                step(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / args.steps
            rounds[key].append(seconds)
            cpu[key] = min(cpu[key], (time.process_time() - cpu_started) / args.steps)
            if seconds < best[key]:
                best[key], update_seconds[key] = seconds, CLOCK.seconds[key] / args.steps
    return best, update_seconds, cpu, rounds


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    batches = make_batches(args)
    names = {
        "a": "(a) ours as it trains: encode once, fixed shapes, ignore_index",
        "b": "(b) ours, head+loss at real positions only (host sync)",
        "c": "(c) HF VisionEncoderDecoder as its Trainer runs it",
        "d": "(d) HF VisionEncoderDecoder fed each image once",
    }
    steps = {}
    plain, lean = build_ours(args), build_ours(args)
    if args.compile:
        for model in (plain, lean):
            model.compile_parts()
    steps["a"] = ours_step(plain, fused_adamw(plain), lean=False, key="a")
    steps["b"] = ours_step(lean, fused_adamw(lean), lean=True, key="b")
    params = {"ours": sum(p.numel() for p in plain.parameters())}
    if args.skip_hf:
        print("(c), (d) skipped: --skip-hf")
    else:
        try:
            hf = build_hf(args)
            hf_run = torch.compile(hf) if args.compile else hf
        except ImportError:
            print("(c), (d) skipped: transformers is not installed (pip install transformers, for this benchmark only)")
        else:
            hf_optimizer = fused_adamw(hf)  # the HF Trainer's default optimizer, "adamw_torch_fused"
            steps["c"] = hf_step(hf_run, hf_optimizer, args.captions, encode_once=False, key="c")
            steps["d"] = hf_step(hf_run, hf_optimizer, args.captions, encode_once=True, key="d")
            params["hf"] = sum(p.numel() for p in hf.parameters())
    encoders = {}  # eager only: a compiled HF model compiles its encoder as part of the whole
    if "d" in steps and not args.compile:
        encoders["a"] = encoder_pass(plain.encoder, plain)  # timm's ViT-S/16
        encoders["d"] = encoder_pass(lambda images: hf.encoder(pixel_values=images).last_hidden_state, hf)
    B, K = args.images, args.captions
    real = sum(int((b["targets"] != PAD).sum()) for b in batches)
    padded, packed = (sum(b[key].numel() for b in batches) for key in ("tokens", "targets"))
    padded -= sum(len(b["tokens"]) for b in batches)  # positions read: the end token is not
    print(
        f"{B} images x {K} captions per step, vocabulary {args.vocab_size}, caption positions real: "
        f"{real / padded:.0%} padded per caption (HF), {real / packed:.0%} packed per image (ours)\n"
        f"{args.device}, {torch.get_num_threads()} threads, fp32, decoder dropout {args.dropout}, "
        f"{'compiled' if args.compile else 'eager'}, "
        f"torch {torch.__version__}"
    )
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in params.items()))
    flops = {key: step_flops(step, batches[0]) for key, step in steps.items()}
    peak = matmul_peak(args.device)
    seconds, update_seconds, cpu, rounds = measure(steps, batches, args)
    peak = max(peak, matmul_peak(args.device))  # before and after: the machine's load may change in between
    print(f"fp32 matmul peak (2048^3): {peak:.0f} GFLOP/s")
    for key, step_seconds in seconds.items():
        rate = flops[key] / step_seconds / 1e9
        print(
            f"{names[key]:<66s} {B / step_seconds:6.2f} images/s  {flops[key] / 1e9:6.0f} GFLOP/step  "
            f"{rate:5.0f} GFLOP/s ({rate / peak:.0%} of peak)  update {update_seconds[key]:.2f} s of the step"
        )
    speed = {key: B / s for key, s in seconds.items()}
    threads = torch.get_num_threads()
    print("images per CPU second x threads (less sensitive to a busy machine): " + ", ".join(
        f"({key}) {B * threads / value:.2f}" for key, value in cpu.items()))  # fmt: skip
    if "c" in cpu:
        print(f"CPU-time ratio (a)/(c) = {cpu['c'] / cpu['a']:.2f}x   (a)/(d) = {cpu['d'] / cpu['a']:.2f}x   "
              f"(a)/(b) = {cpu['b'] / cpu['a']:.2f}x")  # fmt: skip
    print(f"ratio (a)/(b) = {speed['a'] / speed['b']:.2f}x   (fixed shapes against the head at real positions)")
    if "c" in speed:
        print(f"ratio (a)/(c) = {speed['a'] / speed['c']:.2f}x   (a)/(d) = {speed['a'] / speed['d']:.2f}x")
        paired = {key: sorted(c / a for a, c in zip(rounds["a"], rounds[key], strict=True)) for key in "cd"}
        print(
            "paired within each round (robust to the machine's speed drifting between rounds), median (range): "
            + "   ".join(f"(a)/({key}) = {r[len(r) // 2]:.2f}x ({r[0]:.2f}-{r[-1]:.2f})" for key, r in paired.items())
        )
        model_only = {key: s - update_seconds[key] for key, s in seconds.items()}  # forward and backward only
        print(
            f"without the update: (a)/(c) = {model_only['c'] / model_only['a']:.2f}x   "
            f"(a)/(d) = {model_only['d'] / model_only['a']:.2f}x   (a)/(b) = {model_only['b'] / model_only['a']:.2f}x"
        )
    print(guard_and_clipping(plain))
    if encoders:
        encoder_seconds = measure(encoders, batches, args)[0]
        rest = {key: seconds[key] - encoder_seconds[key] for key in encoders}  # decoder, loss and update
        print(
            f"the encoder alone (forward and backward): ours (timm) {encoder_seconds['a']:.2f} s, HF (ViTModel) "
            f"{encoder_seconds['d']:.2f} s, {encoder_seconds['a'] / seconds['a']:.0%} of (a)'s step\n"
            f"the rest of the step (decoder, loss, update): (a) {rest['a']:.2f} s, (d) {rest['d']:.2f} s, "
            f"(a)/(d) = {rest['d'] / rest['a']:.2f}x"
        )


if __name__ == "__main__":
    main()
