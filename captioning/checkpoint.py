"""Self-contained checkpoints: weights, model hyper-parameters and the tokenizer, loaded without running code.

Lightning writes the checkpoint; the training module adds a "captioning" entry with the model config and the
tokenizer, so that `Captioner.from_checkpoint` needs nothing else. Loading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from captioning.model.captioner import ModelConfig
from captioning.text.tokenizer import CaptionTokenizer

FORMAT_VERSION = 1


def checkpoint_metadata(config: ModelConfig, tokenizer: CaptionTokenizer) -> dict:
    return {"format": FORMAT_VERSION, "model_config": config.to_dict(), "tokenizer": tokenizer.to_json()}


def load_checkpoint(path: str | Path) -> tuple[ModelConfig, CaptionTokenizer, dict[str, torch.Tensor]]:
    """Reads a captioning checkpoint safely.

    Returns:
        The model config, the tokenizer and the model's state dict (keys without the "model." prefix).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint ({str(error).splitlines()[0]})") from None
    meta = checkpoint.get("captioning") if isinstance(checkpoint, dict) else None
    if not meta or "model_config" not in meta or "tokenizer" not in meta:
        raise ValueError(f"{path}: not a captioning checkpoint (no 'captioning' entry with model config and tokenizer)")
    config = ModelConfig.from_dict(meta["model_config"])
    tokenizer = CaptionTokenizer.from_json(meta["tokenizer"])
    state = {k.removeprefix("model."): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("model.")}
    return config, tokenizer, state
