"""The export folder that `captioning export` writes and both runtimes read: file names, `config.json`, the tokenizer.

Torch-free, so that `captioning.onnx_captioner` reads it without torch, and neither it nor `captioning.export` (the
writer) imports the other. `config.json` holds a format version, the model config, the preprocessing and the
checkpoint's default decoding spec (absent in folders from before it: `DecodeSpec()`).
"""

from __future__ import annotations

import json
from pathlib import Path

from captioning.decoding import DecodeSpec
from captioning.errors import UserError
from captioning.text.tokenizer import CaptionTokenizer

EXPORT_FORMAT = 1
CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
ENCODER, DECODER_STEP = "encoder.onnx", "decoder_step.onnx"


def read_export_config(folder: str | Path) -> tuple[dict, CaptionTokenizer]:
    """config.json (checked) and the tokenizer of an export folder; one-line errors name the file at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder not found: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (write an export folder with `captioning export`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT or "model_config" not in config:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{path}: not a captioning export of format {EXPORT_FORMAT} (format: {found})")
    path = folder / TOKENIZER
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        tokenizer = CaptionTokenizer.from_json(path.read_text(encoding="utf-8"))
    except Exception as error:  # the tokenizers library raises its own exception types
        raise UserError(f"{path}: not a caption tokenizer ({str(error).splitlines()[0]})") from None
    return config, tokenizer


def export_spec(config: dict, folder: str | Path) -> DecodeSpec:
    """The default decoding spec of an export folder's config.json."""
    return DecodeSpec.from_dict(config.get("decode_spec", {}), f"{Path(folder) / CONFIG}: decode_spec")
