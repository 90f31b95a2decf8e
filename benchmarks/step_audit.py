"""What a training step asks of the host: syncs, boolean-mask indexings and aten calls per steady-state optimizer step,
the non-finite guard's share, and the graph breaks and recompiles of the compiled step over varying caption widths.

Counted in-process with a TorchDispatchMode over real Lightning steps of a config (CPU, no validation, logging steps
left out), so it needs no GPU; on a GPU each host sync drains the device's queue. Prints one JSON line.

    python benchmarks/step_audit.py --config configs/shapes.yaml
    python benchmarks/step_audit.py --config configs/shapes.yaml --scst      # the self-critical step instead
    python benchmarks/step_audit.py --explain                                # where each sync comes from
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import yaml
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioning.data.datamodule import CaptionDataModule  # noqa: E402
from captioning.errors import UserError, first_line  # noqa: E402
from captioning.model import CaptioningModel, ModelConfig  # noqa: E402
from captioning.text.packing import PackedRows, pack_captions  # noqa: E402
from captioning.training.module import CaptioningModule  # noqa: E402
from captioning.training.nonfinite import NonFiniteGuard  # noqa: E402
from captioning.training.progress import LineProgress  # noqa: E402

aten = torch.ops.aten
# Ops whose result the host must read before it can go on: a GPU drains its queue for each.
SYNC_OPS = {
    aten._local_scalar_dense,  # .item(), float(t), bool(t), if t:
    aten.is_nonzero,
    aten.nonzero,
    aten.masked_select,
    aten.equal,
    aten.unique_consecutive,
    aten._unique2,
}
INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
# Tensor methods that copy to the host without an aten op that says so (on a CPU-only machine a copy to the CPU is no
# op at all): seen one level up, as torch functions. `.to(device)` is left out: here the training device is the CPU.
HOST_READS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


class _HostReads(TorchFunctionMode):
    """Counts `.tolist()`, `.numpy()` and `.cpu()` into an OpCounter."""

    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS and not _in_data_loading():
            self.counter.host_read(func.__name__)
        return func(*args, **kwargs)


class OpCounter(TorchDispatchMode):
    """Counts aten calls, host syncs and boolean-mask indexings (each a hidden nonzero), with where each sync was."""

    def __init__(self, explain: bool = False) -> None:
        super().__init__()
        self.explain = explain
        self.reset()

    def __enter__(self):
        self._reads = _HostReads(self)
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._reads.__exit__(*exc)

    def host_read(self, name: str) -> None:
        self.syncs += 1
        self.host_reads += 1
        if self.explain:
            self.sources[f"{name} at {_caller()}"] += 1

    def reset(self) -> None:
        self.host_reads = 0
        self.calls = 0
        self.syncs = 0
        self.mask_indexings = 0
        self.phase_calls: collections.Counter = collections.Counter()
        self.sources: collections.Counter = collections.Counter()
        self.phase = "step"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _in_data_loading():  # the sampler and collate work on host tensors by design: not the device's step
            self.phase_calls["data"] += 1
            return func(*args, **kwargs)
        self.calls += 1
        self.phase_calls[self.phase] += 1
        packet = func.overloadpacket
        sync = packet in SYNC_OPS or (packet is aten.repeat_interleave and kwargs.get("output_size") is None)
        if packet in INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.mask_indexings += 1
                sync = True
        if sync:
            self.syncs += 1
            if self.explain:
                self.sources[f"{packet.__name__} at {_caller()}"] += 1
        return func(*args, **kwargs)


def _in_data_loading() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "torch/utils/data/" in name or "/captioning/data/" in name:
            return True
        frame = frame.f_back
    return False


def _caller() -> str:
    """The innermost frame of our code or of Lightning that led to an op."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/captioning/" in frame.filename or "/lightning/" in frame.filename:
            return f"{frame.filename.split('site-packages/')[-1].split('/main/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


class StepWindow(Callback):
    """Counts from the start of one training batch to the start of the next, for the steps chosen."""

    def __init__(self, counter: OpCounter, warmup: int, steps: int, log_every: int) -> None:
        self.counter, self.warmup, self.steps, self.log_every = counter, warmup, steps, log_every
        self.per_step: list[dict] = []
        self._open = False

    def _close(self) -> None:
        if self._open:
            c = self.counter
            self.per_step.append(
                {
                    "syncs": c.syncs,
                    "mask_indexings": c.mask_indexings,
                    "host_reads": c.host_reads,
                    "aten_calls": c.calls,
                    "guard_calls": c.phase_calls["guard"],
                    "data_calls": c.phase_calls["data"],
                    "sources": dict(c.sources),
                }
            )
            c.__exit__(None, None, None)
            self._open = False

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        self._close()
        step = trainer.global_step
        logging_step = (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % self.log_every == 0
        if self.warmup <= step < self.warmup + self.steps and not logging_step:
            self.counter.reset()
            self.counter.__enter__()
            self._open = True

    def on_train_end(self, trainer, module) -> None:
        self._close()


def _guarded(module: CaptioningModule, counter: OpCounter) -> None:
    """Attributes the aten calls of the non-finite guard's hooks to the phase "guard"."""

    def phase(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            counter.phase = "guard"
            try:
                return method(*args, **kwargs)
            finally:
                counter.phase = "step"

        return wrapper

    guard = module.nonfinite
    for name in ("observe_loss", "skip_step", "check"):
        if hasattr(guard, name):
            setattr(guard, name, phase(getattr(guard, name)))


def load_config(path: str) -> dict:
    with open(path) as file:
        return yaml.safe_load(file)


def _optimizer(spec: dict | None):
    if not spec:
        return torch.optim.AdamW
    module, _, name = spec["class_path"].rpartition(".")
    return functools.partial(getattr(importlib.import_module(module), name), **spec.get("init_args", {}))


def build(config: dict, scst: bool) -> tuple[CaptioningModule, CaptionDataModule]:
    model_args = dict(config.get("model", {}))
    model_args["optimizer"] = _optimizer(model_args.pop("optimizer", None))
    model_args["compile"] = False  # the eager step is counted; the compiled one below
    model_args["init_from"] = None
    if scst:
        model_args.update(scst=True, scst_samples=model_args.get("scst_samples", 5))
    data_args = dict(config.get("data", {}))
    for key in ("encoder", "image_size", "max_length"):  # the CLI links these from the model
        if key in model_args:
            data_args[key] = model_args[key]
    return CaptioningModule(**model_args), CaptionDataModule(**data_args)


def audit_steps(config: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    module, data = build(config, args.scst)
    trainer_config = config.get("trainer", {})
    log_every = int(trainer_config.get("log_every_n_steps", 50))
    counter = OpCounter(args.explain)
    window = StepWindow(counter, args.warmup, args.steps, log_every)
    bars = {"tqdm": [TQDMProgressBar()], "line": [LineProgress()], "none": []}[args.progress]
    with tempfile.TemporaryDirectory() as logs:
        trainer = Trainer(
            accelerator="cpu", devices=1, precision=trainer_config.get("precision", "32-true"),
            gradient_clip_val=trainer_config.get("gradient_clip_val"), log_every_n_steps=log_every,
            accumulate_grad_batches=trainer_config.get("accumulate_grad_batches", 1),
            max_steps=args.warmup + args.steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
            logger=CSVLogger(logs), enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=args.progress != "none", callbacks=[window, *bars],
        )  # fmt: skip
        module.configure_model = _then(module.configure_model, lambda: _guarded(module, counter))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.fit(module, data)
    steps = window.per_step
    if not steps:
        raise SystemExit("no steady-state step was counted: raise --steps or lower the config's log_every_n_steps")
    keys = ("syncs", "mask_indexings", "host_reads", "aten_calls")
    result = {key: statistics.median(s[key] for s in steps) for key in keys}
    result["guard_aten_calls"] = statistics.median(s["guard_calls"] for s in steps)
    result["data_loading_aten_calls"] = statistics.median(s["data_calls"] for s in steps)  # not in aten_calls
    result["steps_counted"] = len(steps)
    result["parameters"] = sum(p.numel() for p in module.model.parameters())
    result["gradients"] = sum(p.requires_grad for p in module.model.parameters())
    if args.explain:
        result["sync_sources"] = steps[-1]["sources"]
    return result


def _then(method, after):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        value = method(*args, **kwargs)
        after()
        return value

    return wrapper


def guard_cost(encoder: str, dim: int, depth: int, image_size: int) -> dict:
    """Aten calls of the non-finite guard for one optimizer step of a bigger model (e.g. ViT-S/16 + 6 x 512), with a
    gradient on every parameter: the guard's cost must not grow with the number of gradients."""
    config = ModelConfig(vocab_size=1000, encoder=encoder, image_size=image_size, dim=dim, depth=depth, num_heads=8)
    model = CaptioningModel(config)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    guard = NonFiniteGuard(limit=20)
    loss = torch.tensor(1.0)
    counter = OpCounter()
    with counter:
        _run_guard(guard, loss, optimizer)
    return {"model": f"{encoder} + {depth}x{dim}", "gradients": len(params), "guard_aten_calls": counter.calls,
            "guard_syncs": counter.syncs}  # fmt: skip


def _run_guard(guard: NonFiniteGuard, loss: torch.Tensor, optimizer) -> None:
    """One step of the guard, whichever interface it has: the device-side check or the older host verdict."""
    guard.observe_loss(loss)
    if hasattr(guard, "check"):
        guard.check(optimizer)
    else:
        guard.skip_step(optimizer, lambda flag: flag.float())


def compile_audit(config: dict, widths: range, scst_samples: int) -> dict:
    """Graph breaks and recompiles of the compiled model (backend "eager": what Dynamo captures, on any machine) over
    caption widths, for each pass on its own (a run trains with one of them): the XE training forward and backward
    over packed rows, and SCST's teacher-forced pass, which runs the decoder without dropout (the sampling policy)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from captioning.data.transforms import data_config

    model_args = config.get("model", {})
    architecture = {k: model_args[k] for k in ("encoder", "image_size", "dim", "depth", "num_heads", "mlp_ratio",
                                               "max_length", "dropout") if k in model_args}  # fmt: skip
    architecture["max_length"] = max(architecture.get("max_length", 24), widths.stop)  # every width fits
    size = data_config(architecture.get("encoder", "test_convnext"), architecture.get("image_size"))["input_size"][-1]
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)  # as the loader hands them over
    captions = int(config.get("data", {}).get("captions_per_image", 5))
    result = {"widths": f"{widths.start}..{widths.stop - 1}", "graph_breaks": 0, "graph_break_reasons": []}
    for name, rows in (("xe", captions), ("scst", scst_samples)):
        torch.manual_seed(0)
        model = CaptioningModel(ModelConfig(vocab_size=100, pretrained=False, **architecture)).train()
        torch._dynamo.reset()
        counters.clear()
        model.compile_parts(backend="eager")
        first = None
        for width in widths:
            tokens = torch.randint(3, 100, (2 * rows, width))
            if name == "xe":  # as the collate packs them: one row per image
                packed = pack_captions(tokens, rows, pad_id=0)
                logits = model.decoder(packed["inputs"], model.encode(images), packing=PackedRows.of(packed))
                logits.float().sum().backward()
            else:
                memory = model.encode(images)  # (B, M, D), with gradients: the pass trains the encoder too
                model.decoder.eval()
                model.decoder(tokens, memory).float().sum().backward()
                model.decoder.train()
            first = counters["frames"]["ok"] if first is None else first
        result["graph_breaks"] += sum(counters["graph_break"].values())
        result["graph_break_reasons"] += sorted(counters["graph_break"])[:3]
        result[f"{name}_recompiles"] = counters["frames"]["ok"] - first
    result["recompiles"] = max(result["xe_recompiles"], result["scst_recompiles"])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes.yaml"))
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before counting")
    parser.add_argument("--steps", type=int, default=4, help="steps counted (logging steps are left out)")
    parser.add_argument("--scst", action="store_true", help="count the self-critical step (random weights)")
    parser.add_argument("--progress", choices=["tqdm", "line", "none"], default="tqdm",
                        help="progress bar: tqdm is what a terminal gets, line what a log file gets")  # fmt: skip
    parser.add_argument("--guard-model", default="vit_small_patch16_224:512x6",
                        help="ENCODER:DIMxDEPTH whose guard cost is counted ('' to skip)")  # fmt: skip
    parser.add_argument("--widths", default="8-30", help="caption widths of the compile check ('' to skip)")
    parser.add_argument("--explain", action="store_true", help="also print where each sync comes from")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_config(args.config)
    result = {"config": args.config, "scst": args.scst, "progress": args.progress}
    try:
        result.update(audit_steps(config, args))
    except (UserError, OSError) as error:  # e.g. configs/coco.yaml without COCO here: the other audits still run
        result["steps"] = f"skipped: {first_line(error)}"
    if args.guard_model:
        encoder, _, shape = args.guard_model.partition(":")
        dim, depth = (int(v) for v in shape.split("x"))
        result["guard"] = guard_cost(encoder, dim, depth, 224)
    if args.widths:
        low, high = (int(v) for v in args.widths.split("-"))
        result["compile"] = compile_audit(config, range(low, high + 1), 5)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
