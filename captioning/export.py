"""`captioning export`: a checkpoint as safetensors weights, or as ONNX graphs for onnxruntime.

An export folder holds `config.json` (the model config, the preprocessing and a format version) and
`tokenizer.json`, beside either `model.safetensors` (loaded by `Captioner.from_pretrained` without unpickling
anything) or `encoder.onnx` and `decoder_step.onnx`: the image encoder with each layer's cross-attention K, V
projected once per image, and one KV-cached decoder step, which `captioning.onnx_captioner` decodes with (greedy,
beam search or sampling, without torch). Both kinds carry the checkpoint's default decoding spec.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from captioning.caption import bounded_number
from captioning.checkpoint import checkpoint_spec, load_checkpoint
from captioning.decoding import DecodeSpec
from captioning.errors import UserError
from captioning.export_format import (
    CONFIG,
    DECODER_STEP,
    ENCODER,
    EXPORT_FORMAT,
    TOKENIZER,
    WEIGHTS,
    read_export_config,
)
from captioning.files import write_atomic, write_json
from captioning.model.attention import KVCache
from captioning.model.captioner import CaptioningModel, ModelConfig
from captioning.model.generation import TorchStepper
from captioning.text.tokenizer import CaptionTokenizer

# The largest |log-probability difference| between onnxruntime and torch that an ONNX export may show: float32
# kernels differ by far less (5e-7 on the tiny test model); a graph that computes something else, by far more.
TOLERANCE = 1e-3
EXAMPLES = """examples:
  captioning export --checkpoint last.ckpt --format safetensors --out exported/
  captioning export --checkpoint last.ckpt --format onnx --out exported-onnx/
then, in Python:
  Captioner.from_pretrained("exported/").caption(["photo.jpg"])
  OnnxCaptioner("exported-onnx/").caption(["photo.jpg"])   # from captioning.onnx_captioner
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning export",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint written by `captioning fit`")
    parser.add_argument("--format", choices=("safetensors", "onnx"), required=True, help="what to write")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write (created if missing)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    parser.add_argument(
        "--tolerance",
        metavar="TOL",
        type=bounded_number(float, 0),
        default=TOLERANCE,
        help="ONNX: the largest |log-probability difference| from the torch model, checked on a random image for a "
        f"few greedy steps, that the export accepts; beyond it the command fails (default: {TOLERANCE:g})",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    config, tokenizer, state = load_checkpoint(args.checkpoint)
    model, spec = _build_model(config, state, args.checkpoint), checkpoint_spec(args.checkpoint)
    if args.format == "safetensors":
        written = save_pretrained(model, tokenizer, out, spec)
    else:
        written = export_onnx(model, tokenizer, out, opset=args.opset, spec=spec)
        difference = check_onnx(model, out)
        print(f"onnxruntime vs torch on a random image: max |log-prob difference| {difference:.2e}", file=sys.stderr)
        if not difference <= args.tolerance:  # NaN fails too
            print(
                f"error: {out}: onnxruntime and torch log-probabilities differ by up to {difference:.2e}, more than "
                f"--tolerance {args.tolerance:g}: the ONNX graphs may not caption as the checkpoint does",
                file=sys.stderr,
            )
            return 1
    for path in written:
        print(path)
    return 0


def _build_model(config: ModelConfig, state: dict[str, Tensor], source: str | Path) -> CaptioningModel:
    config.pretrained = False  # the weights come from the checkpoint or the export
    model = CaptioningModel(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        reason = " ".join(str(error).split())[:300]
        raise UserError(f"{source}: weights do not fit the model config ({reason})") from None
    missing = [name for name in missing if name not in _tied_names(model)]
    if missing or unexpected:
        problem = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise UserError(f"{source}: weights do not fit the model config ({problem})")
    return model.eval()


def _tied_names(model: nn.Module) -> set[str]:
    """Names of tensors that share their storage with an earlier name (the LM head tied to the token embedding)."""
    seen, tied = set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        pointer = tensor.data_ptr()
        if pointer in seen:
            tied.add(name)
        seen.add(pointer)
    return tied


def _write_metadata(
    model: CaptioningModel, tokenizer: CaptionTokenizer, out: Path, kind: str, spec: DecodeSpec | None
) -> list[Path]:
    """config.json: the format, the model config, the default decoding spec and the input its encoder expects (what
    `captioning.images.preprocess` makes, for the ONNX runtime and readers outside this package); tokenizer.json."""
    from captioning.data.transforms import data_config

    data = data_config(model.config.encoder, model.config.image_size)
    preprocess = {
        "input_size": list(data["input_size"]),
        "mean": list(data["mean"]),
        "std": list(data["std"]),
        "interpolation": data.get("interpolation", "bicubic"),
    }
    config = {"format": EXPORT_FORMAT, "kind": kind, "model_config": model.config.to_dict(), "preprocess": preprocess}
    config["decode_spec"] = (spec or DecodeSpec()).to_dict()
    tokenizer_path = write_atomic(out / TOKENIZER, lambda file: file.write(tokenizer.to_json().encode("utf-8")))
    return [write_json(out / CONFIG, config), tokenizer_path]


def save_pretrained(
    model: CaptioningModel, tokenizer: CaptionTokenizer, out: str | Path, spec: DecodeSpec | None = None
) -> list[Path]:
    """Writes model.safetensors, config.json and tokenizer.json into `out`; returns the paths written."""
    from safetensors.torch import save

    out = Path(out)
    tied = _tied_names(model)
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items() if name not in tied}
    data = save(tensors, metadata={"format": "pt"})
    weights = write_atomic(out / WEIGHTS, lambda file: file.write(data))
    return [weights, *_write_metadata(model, tokenizer, out, "safetensors", spec)]


def load_pretrained(folder: str | Path) -> tuple[ModelConfig, CaptionTokenizer, dict[str, Tensor]]:
    """Reads a safetensors export folder (no pickle, no code run).

    Returns:
        The model config, the tokenizer and the state dict (tied weights appear once).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, tokenizer = read_export_config(folder)
    try:
        model_config = ModelConfig.from_dict(config["model_config"])
    except (TypeError, ValueError) as error:
        raise UserError(f"{Path(folder) / CONFIG}: bad model_config ({error})") from None
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (an ONNX export? load it with captioning.onnx_captioner)")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: not readable safetensors ({error})") from None
    return model_config, tokenizer, state


def load_pretrained_model(folder: str | Path) -> tuple[CaptioningModel, CaptionTokenizer]:
    """The model (eval mode, on the CPU) and tokenizer of a safetensors export folder."""
    config, tokenizer, state = load_pretrained(folder)
    return _build_model(config, state, Path(folder) / WEIGHTS), tokenizer


class EncoderGraph(nn.Module):
    """Images -> each decoder layer's cross-attention keys and values, projected once per image.

    Inputs: images (B, 3, S, S), normalised. Outputs: cross_keys and cross_values, each (L, B, nh, M, hs).
    """

    def __init__(self, model: CaptioningModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        memory = self.model.encode(images)  # (B, M, D)
        keys, values = zip(*(block.cross_attn.project_kv(memory) for block in self.model.decoder.blocks), strict=True)
        return torch.stack(keys), torch.stack(values)  # each (L, B, nh, M, hs)


class DecoderStepGraph(nn.Module):
    """One decoding step: the newest token of each row, read against the caches, gives the next token's logits.

    Inputs: tokens (B, 1) int64; position (1,) int64, that token's index in the caption (the start token is at 0);
    cross_keys, cross_values (L, B, nh, M, hs) from the encoder; past_keys, past_values (L, B, nh, S, hs), the
    self-attention caches of the S earlier positions (S = 0 at the start token).
    Outputs: logits (B, V); present_keys, present_values (L, B, nh, S + 1, hs), the caches for the next step.
    """

    def __init__(self, model: CaptioningModel) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self,
        tokens: Tensor,
        position: Tensor,
        cross_keys: Tensor,
        cross_values: Tensor,
        past_keys: Tensor,
        past_values: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        decoder = self.decoder
        x = decoder.token_embed(tokens) + decoder.pos_embed(position)  # (B, 1, D), as TextDecoder.embed
        caches, focus = [], None
        for i, block in enumerate(decoder.blocks):
            cache = (KVCache(past_keys[i], past_values[i]), KVCache(cross_keys[i], cross_values[i]))
            # The block's own forward, so the step computes what torch's cached decoding does; the memory is
            # already projected into the cross-attention cache, and any tensor passed as memory marks that branch.
            x, focus = block(x, cross_keys[i], cache, decoder.memory_grid, focus)
            caches.append(cache[0])
        logits = decoder.head(decoder.norm(x))[:, -1]  # (B, V)
        return logits, torch.stack([c.k for c in caches]), torch.stack([c.v for c in caches])


def export_onnx(
    model: CaptioningModel,
    tokenizer: CaptionTokenizer,
    out: str | Path,
    opset: int = 18,
    spec: DecodeSpec | None = None,
) -> list[Path]:
    """Writes encoder.onnx, decoder_step.onnx, config.json and tokenizer.json into `out`; returns the paths.

    The batch is a dynamic axis of both graphs, and so is the cache length of the decoder step.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    encoder, step = EncoderGraph(model).eval(), DecoderStepGraph(model).eval()
    images = torch.zeros(2, 3, *_input_size(model))
    with torch.no_grad():
        cross_keys, cross_values = encoder(images)  # each (L, B, nh, M, hs)
    L, B, nh, _, hs = cross_keys.shape
    # An example cache of 3 positions; keys and values must be distinct tensors, or the export takes them for one.
    past_keys, past_values = torch.zeros(L, B, nh, 3, hs), torch.zeros(L, B, nh, 3, hs)
    tokens, position = torch.ones(B, 1, dtype=torch.long), torch.tensor([3])
    batch, length = torch.export.Dim("batch"), torch.export.Dim("cache_length")
    step_shapes = {
        "tokens": {0: batch},
        "position": None,
        "cross_keys": {1: batch},
        "cross_values": {1: batch},
        "past_keys": {1: batch, 3: length},
        "past_values": {1: batch, 3: length},
    }
    _export(encoder, (images,), out / ENCODER, ["cross_keys", "cross_values"], {"images": {0: batch}}, opset)
    step_inputs = (tokens, position, cross_keys, cross_values, past_keys, past_values)
    _export(step, step_inputs, out / DECODER_STEP, ["logits", "present_keys", "present_values"], step_shapes, opset)
    return [out / ENCODER, out / DECODER_STEP, *_write_metadata(model, tokenizer, out, "onnx", spec)]


def _input_size(model: CaptioningModel) -> tuple[int, int]:
    """(H, W) of the images the encoder takes."""
    from captioning.data.transforms import data_config

    return tuple(data_config(model.config.encoder, model.config.image_size)["input_size"][-2:])


def _export(
    module: nn.Module, inputs: tuple, path: Path, output_names: list[str], dynamic_shapes: dict, opset: int
) -> None:
    """torch.onnx.export through torch.export (dynamo); the inputs are named as `dynamic_shapes`, in its order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. that the axis names it was given are merged into one
        program = torch.onnx.export(
            module,
            inputs,
            input_names=list(dynamic_shapes),
            output_names=output_names,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
    write_atomic(path, lambda file: file.write(program.model_proto.SerializeToString()))


def check_onnx(model: CaptioningModel, folder: str | Path, steps: int = 3) -> float:
    """Reads a random image's greedy caption for a few steps with both runtimes' steppers and returns the largest
    |log-probability| difference (log-probabilities, not logits: decoding reads them, and they ignore a shift)."""
    from captioning.onnx_captioner import OnnxCaptioner  # the runtime side never imports this module

    onnx_captioner = OnnxCaptioner(folder)
    images = torch.rand(1, 3, *_input_size(model), generator=torch.Generator().manual_seed(0))
    differences = []
    with torch.no_grad():
        torch_step = TorchStepper(model.decoder, model.encode(images))
        onnx_step = onnx_captioner.stepper(images.numpy())
        history = torch.full((1, 1), onnx_captioner.tokenizer.bos_id)  # (1, 1+t)
        for _ in range(steps):
            log_probs = torch_step(history)  # (1, V)
            differences.append((torch.from_numpy(onnx_step(history.numpy())) - log_probs).abs().max())
            history = torch.cat([history, log_probs.argmax(-1, keepdim=True)], dim=1)
    return float(torch.stack(differences).max())  # a NaN, if any, wins: it fails every tolerance
