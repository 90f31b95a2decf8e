"""Self-contained checkpoints: weights, model hyper-parameters and the tokenizer, loaded without running code.

Lightning writes the checkpoint; the training module adds a "captioning" entry with the model config and the
tokenizer, so that `Captioner.from_checkpoint` needs nothing else. Every load goes through `read_checkpoint`:
`torch.load(weights_only=True)`, which refuses pickled code instead of running it, and a one-line
`CheckpointError` for any file that is not a readable checkpoint.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from captioning.decoding import DecodeSpec
from captioning.errors import CheckpointError, UserError, first_line
from captioning.model.captioner import ModelConfig
from captioning.text.tokenizer import CaptionTokenizer

FORMAT_VERSION = 1
# What torch.load raises for a file that is not a checkpoint (truncated, another format, refused pickled objects).
UNREADABLE = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError, KeyError)


def checkpoint_metadata(
    config: ModelConfig, tokenizer: CaptionTokenizer, training_data: dict | None = None, spec: DecodeSpec | None = None
) -> dict:
    """The "captioning" entry: format, model config, tokenizer, and when known what the model was trained on and how
    its captions are decoded by default."""
    entry = {"format": FORMAT_VERSION, "model_config": config.to_dict(), "tokenizer": tokenizer.to_json()}
    entry = {**entry, "training_data": training_data} if training_data else entry
    return {**entry, "decode_spec": spec.to_dict()} if spec else entry


def checkpoint_spec(path: str | Path) -> DecodeSpec:
    """How a checkpoint's captions are decoded unless a caller says otherwise (see `default_spec`)."""
    return default_spec(read_checkpoint(path, mmap=True), path)


def default_spec(checkpoint: dict, source: str | Path = "checkpoint") -> DecodeSpec:
    """The checkpoint's "captioning.decode_spec"; else the spec its validation and test decoded with (the training
    module's `eval_beam_size` and `eval_length_penalty`), so that `caption` writes what `test` scored; else, for
    checkpoints written outside the training module, `DecodeSpec()`."""
    entry = checkpoint.get("captioning")
    if isinstance(entry, dict) and "decode_spec" in entry:
        return DecodeSpec.from_dict(entry["decode_spec"], f"{source}: captioning.decode_spec")
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "eval_beam_size" not in hparams:
        return DecodeSpec()
    try:
        return DecodeSpec.beams(hparams["eval_beam_size"], length_penalty=hparams.get("eval_length_penalty", 1.0))
    except UserError as error:
        raise CheckpointError(f"{source}: hyper_parameters.eval_beam_size or eval_length_penalty: {error}") from None


def training_data(path: str | Path) -> dict | None:
    """What a checkpoint's model was trained on ({"dataset", "images"}); None for checkpoints that do not say."""
    entry = read_checkpoint(path, mmap=True).get("captioning", {})
    data = entry.get("training_data") if isinstance(entry, dict) else None
    return data if isinstance(data, dict) else None


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint's dictionary, loaded with `weights_only=True`: tensors and plain Python values only.

    With `mmap`, tensors stay on disk until touched (CPU only): reading the model config and the tokenizer of a
    checkpoint of a few GB then costs milliseconds.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated, not a torch checkpoint, or holds objects other than weights (such
            as a pickled function call); nothing in it has run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    refuse_other_files(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except UNREADABLE as error:
        raise unreadable(path, error) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dictionary)")
    return checkpoint


# The first bytes of files that people pass by mistake; a torch checkpoint is a zip archive or a pickle (0x80).
SIGNATURES = {
    b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image", b"BM": "a BMP image",
    b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip file",
    b"\x89HDF": "an HDF5 file", b"7z\xbc\xaf": "a 7-Zip archive",
}  # fmt: skip


def refuse_other_files(path: Path) -> None:
    """Raises CheckpointError naming what the file looks like, for a file that cannot be a torch checkpoint."""
    kind = file_kind(path)
    if kind:
        raise CheckpointError(f"{path}: not a checkpoint (it looks like {kind})")


def file_kind(path: Path) -> str | None:
    """What a file that cannot be a torch checkpoint looks like ("a JPEG image", "a .yaml text file"); None for a
    zip archive, a pickle, or anything unrecognised, which torch.load then judges."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                saved_by_torch = any(name.endswith("data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return None  # a truncated checkpoint, say: torch.load tells
        return None if saved_by_torch else "a zip archive without the data.pkl that torch.save writes"
    if head[0] == 0x80:  # a pickle protocol mark
        return None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    kind = next((kind for signature, kind in SIGNATURES.items() if head.startswith(signature)), None)
    if kind:
        return kind
    if head[8:10] == b'{"':  # an 8-byte header length, then the JSON header
        return "a safetensors file: weights without the model config and tokenizer that a checkpoint carries"
    if path.suffix == ".onnx":
        return "an ONNX model: load it with captioning.onnx_captioner.OnnxCaptioner"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the 512 bytes
            return None
    if b"\x00" in head:
        return None
    return f"a {path.suffix} text file" if path.suffix else "a text file"


def unreadable(path: str | Path, error: Exception) -> CheckpointError:
    """The one-line error for a checkpoint that torch.load(weights_only=True) failed to read."""
    return CheckpointError(f"{path}: {_reason(error)}")


def _reason(error: Exception) -> str:
    """One line on why torch.load failed, in our words (its own messages run to a page of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if refused:  # e.g. "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
            name = refused.split("GLOBAL", 1)[1].split()[0]
            return f"not a readable checkpoint: it holds pickled code ({name}), refused and not run"
        detail = next((line for line in lines if line.startswith("Unsupported")), "")
        return f"not a readable checkpoint: a pickle that is not a torch checkpoint{f' ({detail})' if detail else ''}"
    if isinstance(error, (KeyError, EOFError, zipfile.BadZipFile)) or not lines:
        return "not a readable checkpoint: truncated, or not a torch checkpoint file"
    return f"not a readable checkpoint ({lines[0].split('. ')[0]})"  # the first sentence


def missing_entries(checkpoint: dict) -> str | None:
    """What keeps a readable checkpoint from being a captioning one, in one line naming the missing keys; None when
    it has them."""
    meta = checkpoint.get("captioning")
    if isinstance(meta, dict):
        missing = [f"captioning.{key}" for key in ("model_config", "tokenizer") if key not in meta]
    else:
        missing = ["captioning"]
    if not isinstance(checkpoint.get("state_dict"), dict):
        missing.append("state_dict")
    if not missing:
        return None
    keys = sorted(map(str, checkpoint))
    held = f"{len(keys)} keys such as {', '.join(repr(k) for k in keys[:3])}" if keys else "no keys"
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        held = f"a bare state dict of {len(keys)} tensor{'s' * (len(keys) != 1)} such as {keys[0]!r}"
    return (
        f"not a captioning checkpoint: it lacks {', '.join(repr(k) for k in missing)} (it holds {held}); "
        "captioning fit writes checkpoints with the model config, the tokenizer and the weights"
    )


def load_checkpoint(
    path: str | Path, mmap: bool = False
) -> tuple[ModelConfig, CaptionTokenizer, dict[str, torch.Tensor]]:
    """Reads a captioning checkpoint safely (`mmap`: see `read_checkpoint`).

    Returns:
        The model config, the tokenizer and the model's state dict (keys without the "model." prefix): the moving
        average of the weights when the run kept one.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, mmap=mmap)
    problem = missing_entries(checkpoint)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    meta = checkpoint["captioning"]
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        tokenizer = CaptionTokenizer.from_json(meta["tokenizer"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: its 'captioning' entry is damaged ({first_line(error)})") from None
    weights = checkpoint["state_dict"]
    # A run with model.ema_decay keeps the moving average beside the trained weights: the average is the model.
    prefix = "ema.model." if any(k.startswith("ema.model.") for k in weights) else "model."
    state = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    return config, tokenizer, state
