"""timm model names, checked without building a model: shared by `data/` (preprocessing) and `model/` (the encoder),
so that data code never imports the model (timm, Wightman, "PyTorch Image Models")."""

from __future__ import annotations

import difflib

import timm

from captioning.errors import UserError


def check_model_name(name: str) -> None:
    """Raises a one-line error, with the closest names, if timm has no model `name` (an optional `.tag` aside)."""
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UserError(f"unknown timm model name '{name}'{hint}")
