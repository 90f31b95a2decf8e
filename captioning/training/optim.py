"""Optimizer parameter groups: weight decay only where it regularises, and a gentler learning rate for the encoder.

Decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019) is applied to weight
matrices and kernels only; layer-wise learning-rate decay for a pretrained trunk follows BEiT (Bao et al., 2021) and
ELECTRA (Clark et al., 2020), with timm's `group_matcher` assigning each trunk parameter its layer, as timm's own
`param_groups_layer_decay` does.
"""

from __future__ import annotations

import fnmatch
import warnings

from timm.models import group_parameters
from torch import nn
from torch.optim import Optimizer

from captioning.errors import UserError, UserNotice
from captioning.model.captioner import CaptioningModel

FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam, AdamW and SGD kernels


def parameter_groups(
    model: CaptioningModel, encoder_lr_scale: float = 1.0, layer_decay: float | None = None
) -> list[dict]:
    """Splits the trainable parameters into optimizer groups by weight decay and learning-rate scale.

    No weight decay on parameters with ndim <= 1 (biases, normalisation weights, layer scales), on embeddings (the
    decoder's token embedding, tied to the LM head and listed once, and its position embedding), on the model's
    memory positions, nor on what the trunk's `no_weight_decay()` names (position embeddings, class and register
    tokens).

    Weight decay is not an argument: no-decay groups set `weight_decay=0.0` and the decayed groups set none, so they
    take the optimizer's own `weight_decay` (e.g. `AdamW(lr=3e-4, weight_decay=0.05)` in the config) and the value
    lives in one place. The same goes for the learning rate: each group carries `lr_scale`, which `apply_lr_scales`
    multiplies into the optimizer's `lr` once it is built.

    Encoder (trunk) groups get `lr_scale = encoder_lr_scale`; the projection, the memory positions and the decoder get
    1.0.
    With `layer_decay`, trunk layer i gets `encoder_lr_scale * layer_decay ** (top - i)`, where timm's
    `group_matcher` numbers the layers from the stem or patch embedding (0) up, ViT blocks or CNN stage blocks in
    between, and `top` is the highest layer that has trainable parameters: the top of the trunk trains at
    `encoder_lr_scale`, each layer below it `layer_decay` times slower. BEiT's own scales, where the new head trains
    at 1 and the last block at `layer_decay`, are `encoder_lr_scale=layer_decay`. A trunk without a `group_matcher`
    (a few timm families, or a non-timm module) cannot be split into layers: it trains at `encoder_lr_scale`
    throughout, with a warning.

    Args:
        model: the captioner; parameters with `requires_grad=False` (e.g. a frozen encoder) are left out.
        encoder_lr_scale: learning-rate factor of the encoder trunk relative to the optimizer's base learning rate.
        layer_decay: per-layer factor in (0, 1] for the trunk, or None for one scale across the trunk.

    Returns:
        Non-empty param groups, each with `params`, `lr_scale`, `name` (e.g. "decoder/decay", "encoder/no_decay",
        "encoder.layer_3/decay"), `encoder` (True for trunk groups, see `frozen_encoder_factor`) and, in no-decay
        groups, `weight_decay=0.0`. Every trainable parameter is in exactly one group.
    """
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise UserError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    trunk = model.encoder.trunk
    trunk_names = {id(p): name for name, p in trunk.named_parameters() if p.requires_grad}
    trunk_no_decay = list(getattr(trunk, "no_weight_decay", set)())
    layer_ids = _layer_ids(trunk, trunk_names) if layer_decay is not None else {}
    top = max(layer_ids.values(), default=0)
    # Embeddings are lookup tables (words, positions): decay would pull rarely used rows to zero, not regularise a map.
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.startswith(("memory_pos", "memory_sink"))}

    groups: dict[str, dict] = {}
    for param in model.parameters():  # tied weights come once
        if not param.requires_grad:
            continue
        trunk_name = trunk_names.get(id(param))
        in_trunk = trunk_name is not None
        decay = param.ndim > 1 and id(param) not in no_decay
        if in_trunk:
            decay = decay and not _matches(trunk_name, trunk_no_decay)
            lr_scale, part = encoder_lr_scale, "encoder"
            if layer_decay is not None:
                layer = layer_ids[trunk_name]
                lr_scale, part = encoder_lr_scale * layer_decay ** (top - layer), f"encoder.layer_{layer}"
        else:
            lr_scale, part = 1.0, "decoder"
        group_name = f"{part}/{'decay' if decay else 'no_decay'}"
        if group_name not in groups:
            groups[group_name] = {"name": group_name, "params": [], "lr_scale": lr_scale, "encoder": in_trunk}
            if not decay:  # decayed groups take the optimizer's own weight_decay
                groups[group_name]["weight_decay"] = 0.0
        groups[group_name]["params"].append(param)
    return sorted(groups.values(), key=lambda group: not group["encoder"])  # encoder first, bottom layer up


def apply_lr_scales(optimizer: Optimizer) -> None:
    """Sets each group's learning rate to the optimizer's base `lr` times the group's `lr_scale`.

    Call it right after building the optimizer and before the LR scheduler, which takes each group's `lr` as its base.
    Idempotent: the scale applies to `optimizer.defaults["lr"]`, not to the group's current `lr`.
    """
    for group in optimizer.param_groups:
        group["lr"] = optimizer.defaults["lr"] * group.get("lr_scale", 1.0)


def use_fused_kernel(optimizer: Optimizer) -> bool:
    """Switches an optimizer that offers torch's fused kernel (Adam, AdamW, SGD, ...) to it, unless its config chose.

    The fused update reads and writes each parameter, gradient and moment once for all parameters, where the default
    on CPU loops over the parameters one tensor at a time (and `foreach` on GPU launches a few kernels per group).
    Left alone: an explicit `fused` or `foreach` setting, `differentiable`, and parameters off CPU and CUDA.

    Args:
        optimizer: built, before its first step.

    Returns:
        Whether it now uses the fused kernel.
    """
    defaults = optimizer.defaults
    if (
        "fused" not in defaults
        or defaults["fused"] is not None
        or defaults.get("foreach")
        or defaults.get("differentiable")
    ):
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or any(p.device.type not in FUSED_DEVICES or not p.is_floating_point() for p in params):
        return False
    defaults["fused"] = True
    for group in optimizer.param_groups:
        group["fused"] = True  # read at every step
    return True


def frozen_encoder_factor(group: dict, step: int, frozen_steps: int) -> float:
    """The LR multiplier that holds the encoder still for its first `frozen_steps` optimizer steps.

    Freezing by learning rate rather than by `requires_grad` keeps the same parameters and gradients in every step,
    which DDP requires. With lr 0, AdamW and SGD leave the weights exactly as they are (decoupled decay is scaled by
    lr too), although the trunk still costs its backward pass, its Adam moments still accumulate, and a CNN trunk in
    train mode still updates its BatchNorm running statistics.

    Args:
        group: an optimizer param group from `parameter_groups`.
        step: the optimizer step, as LambdaLR counts it.
        frozen_steps: steps to hold the encoder, e.g. frozen_epochs * optimizer steps per epoch.

    Returns:
        0.0 for an encoder group before `frozen_steps`, otherwise 1.0.
    """
    return 0.0 if group.get("encoder", False) and step < frozen_steps else 1.0


def _layer_ids(trunk: nn.Module, names: dict[int, str]) -> dict[str, int]:
    """Layer index of each trainable trunk parameter by timm's `group_matcher`, or 0 for all without one."""
    if not callable(getattr(trunk, "group_matcher", None)):
        warnings.warn(
            f"{type(trunk).__name__} has no group_matcher(), so layer_decay cannot tell its layers apart; "
            "the whole encoder trains at encoder_lr_scale",
            UserNotice,
            stacklevel=3,
        )
        return dict.fromkeys(names.values(), 0)
    # Unmatched parameters (e.g. a final norm) land on the highest layer, as in timm.
    layer_map = group_parameters(trunk, trunk.group_matcher(coarse=False), reverse=True)
    return {name: layer_map[name] for name in names.values()}


def _matches(name: str, patterns: list[str]) -> bool:
    """Whether a trunk parameter is named by `no_weight_decay()`: a name, an fnmatch pattern or a module prefix."""
    return any(fnmatch.fnmatch(name, pattern) or name.startswith(f"{pattern}.") for pattern in patterns)
