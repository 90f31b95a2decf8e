"""The image encoder: any timm model's trunk, its output turned into a sequence of memory tokens.

Transformers return token sequences (B, N, C); CNNs return feature maps (B, C, H, W), flattened to (B, H*W, C).
Built with `timm.create_model(name, pretrained=..., num_classes=0)` (Wightman, "PyTorch Image Models").
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from captioning.data.transforms import data_config
from captioning.errors import UserError, first_line
from captioning.timm_names import check_model_name


class ImageEncoder(nn.Module):
    """A timm trunk that maps images (B, 3, H, W) to tokens (B, M, C_enc).

    Attributes:
        feature_dim: C_enc, the width of each token.
        grid_size: (H', W'), the patch or feature-map grid that the spatial tokens cover.
        num_prefix_tokens: leading tokens that are not on the grid (class and register tokens of a ViT).
        num_tokens: M, all tokens per image at the configured input size.
        output_stride: the trunk's output stride as configured, None for the model's own (32 for most CNNs).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        freeze: bool = False,
        image_size: int | None = None,
        output_stride: int | None = None,
    ):
        super().__init__()
        self.trunk = create_trunk(name, pretrained, image_size, output_stride)
        # Convolutions run on channels-last maps: oneDNN on CPUs and tensor cores on GPUs are fastest there (a ResNet
        # step 1.17-1.20x as fast on a 2-core CPU: benchmarks/channels_last_bench.py). Only 4-D weights change.
        self.trunk.to(memory_format=torch.channels_last)
        self.output_stride = output_stride
        self.freeze = freeze
        if freeze:
            self.trunk.requires_grad_(False)
            # Now, not only in train(): Lightning sets each submodule's mode itself (it captures and restores the
            # flags around validation), so a trunk built in train mode would stay there, and its BatchNorm layers
            # would normalise with batch statistics and overwrite the trunk's running statistics.
            self.trunk.eval()
        self.output_fmt = getattr(self.trunk, "output_fmt", "NCHW")  # e.g. Swin returns NHWC maps
        # 8-bit pixels are normalised here, on the device: (x / 255 - mean) / std = x * scale - shift, as the float
        # transform computes it. Not saved: the encoder's name and image size define them.
        config = data_config(name, image_size)
        std = torch.tensor(config["std"], dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("pixel_scale", 1 / (255 * std), persistent=False)
        self.register_buffer("pixel_shift", torch.tensor(config["mean"]).view(3, 1, 1) / std, persistent=False)
        size = image_size or self.trunk.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        self._probe_output(size)

    def _probe_output(self, size: int) -> None:
        """Traces one blank image through the trunk on the meta device (shapes only, no arithmetic) to learn the
        token layout and the weights that never get a gradient."""
        features = self._trace(size)
        if features.ndim == 4:
            if self.output_fmt == "NHWC":
                features = features.permute(0, 3, 1, 2)
            self.feature_dim, self.grid_size, self.num_prefix_tokens = features.size(1), tuple(features.shape[2:]), 0
            self.num_tokens = self.grid_size[0] * self.grid_size[1]
            return
        self.num_tokens, self.feature_dim = features.shape[1:]
        patch_embed = getattr(self.trunk, "patch_embed", None)
        grid = getattr(patch_embed, "grid_size", None) or getattr(patch_embed, "dynamic_feat_size", lambda s: None)(
            (size, size)
        )
        if grid is None:  # fall back to a square grid after any prefix tokens
            side = int((self.num_tokens - getattr(self.trunk, "num_prefix_tokens", 0)) ** 0.5)
            grid = (side, side)
        self.grid_size = tuple(grid)
        self.num_prefix_tokens = self.num_tokens - self.grid_size[0] * self.grid_size[1]

    def _trace(self, size: int) -> Tensor:
        """forward_features of a blank (1, 3, size, size) image, traced in eval mode, with `_freeze_unused` applied.

        Meta tensors stand in for the weights and the image, so the trace costs milliseconds, not a forward and
        backward pass (about 20 s for a ViT-B/16 on two CPU cores). A trunk that reads tensor values while it runs
        cannot be traced on meta: it gets the real pass instead.
        """
        was_training = self.trunk.training
        self.trunk.eval()
        try:
            with torch.enable_grad():  # also when built inside torch.no_grad(), e.g. in a notebook
                try:
                    features, params = _meta_forward(self.trunk, size)
                except Exception:  # noqa: BLE001 - any op without a meta kernel: the real pass still tells
                    params = dict(self.trunk.named_parameters())
                    features = self._real_pass(size)
                self._freeze_unused(features, params)
        finally:
            self.trunk.train(was_training)
        return features.detach()

    def _real_pass(self, size: int) -> Tensor:
        """forward_features of a blank image; an image size that the trunk cannot take (e.g. a ViT's, not a multiple
        of its patch) is the user's setting, named in a one-line error."""
        try:
            return self.trunk.forward_features(torch.zeros(1, 3, size, size))
        except (AssertionError, RuntimeError, ValueError) as error:
            name = self.trunk.pretrained_cfg.get("architecture") or type(self.trunk).__name__
            raise UserError(f"model.image_size: {name} cannot take {size} px images ({first_line(error)})") from None

    def _freeze_unused(self, features: Tensor, params: dict[str, Tensor]) -> None:
        """Fixes the weights that forward_features never reaches (e.g. a ConvNeXt's head norm, kept by timm at
        num_classes=0): DDP requires every trainable weight to receive a gradient.

        Args:
            features: the trunk's output for a probe image, computed from `params`.
            params: the tensors that stood in for the trunk's parameters, by name (meta copies or the parameters).
        """
        trunk_params = dict(self.trunk.named_parameters())
        names = [name for name, param in trunk_params.items() if param.requires_grad]
        if not names:
            return
        grads = torch.autograd.grad(features.float().sum(), [params[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                trunk_params[name].requires_grad_(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.freeze:  # a frozen trunk keeps its normalisation statistics
            self.trunk.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Encodes images (B, 3, H, W), normalised floats or 8-bit pixels, to tokens (B, M, C_enc)."""
        if images.dtype == torch.uint8:
            images = images.to(self.pixel_scale.dtype).mul_(self.pixel_scale).sub_(self.pixel_shift)
        features = self.trunk.forward_features(images)
        if features.ndim == 4:
            if self.output_fmt == "NHWC":
                return features.flatten(1, 2)  # (B, H, W, C) -> (B, H*W, C)
            return features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return features  # (B, N, C) tokens


class _Features(nn.Module):
    """A trunk's forward_features as a module's forward, for `torch.func.functional_call`."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, images: Tensor) -> Tensor:
        return self.trunk.forward_features(images)


def _meta_forward(trunk: nn.Module, size: int) -> tuple[Tensor, dict[str, Tensor]]:
    """forward_features with every parameter and buffer replaced by a meta tensor (shape and dtype, no storage).

    Returns:
        The features, e.g. (1, N, C) or (1, C, H, W), and the meta parameters by name, for autograd to reach.
    """
    params = {
        n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad) for n, p in trunk.named_parameters()
    }
    buffers = {n: torch.empty_like(b, device="meta") for n, b in trunk.named_buffers()}
    stand_ins = {f"trunk.{name}": tensor for name, tensor in {**params, **buffers}.items()}
    image = torch.zeros(1, 3, size, size, device="meta")
    return torch.func.functional_call(_Features(trunk), stand_ins, (image,)), params


def create_trunk(name: str, pretrained: bool, image_size: int | None, output_stride: int | None = None) -> nn.Module:
    """timm.create_model with the classifier removed and clear errors for unknown names and missing weights.

    Args:
        name: timm model name.
        pretrained: load timm's pretrained weights.
        image_size: square input size, for models that are built for one (ViTs); CNNs take any size.
        output_stride: input pixels per feature-map cell, e.g. 16 instead of a CNN's 32: timm dilates the last
            stages instead of striding them (same weights, a 2x finer grid, more compute). None: the model's own.
    """
    check_model_name(name)
    kwargs = {"img_size": image_size} if image_size else {}
    if output_stride:
        kwargs["output_stride"] = output_stride
    try:
        try:
            return _create_model(name, pretrained, kwargs)
        except TypeError as error:
            if not output_stride or "'output_stride'" not in str(error):
                raise
            raise UserError(  # ViTs and a few other families have no output stride
                f"model.encoder_output_stride: timm model '{name}' has no output_stride option (CNNs such as "
                "ResNets and ConvNeXts have one); leave it unset (null) for this encoder"
            ) from None
        except AssertionError as error:  # timm's check of the stride's value, e.g. a ResNet's 8, 16 or 32
            if not output_stride:
                raise
            raise UserError(
                f"model.encoder_output_stride: timm model '{name}' cannot run at output stride {output_stride} "
                f"({str(error).strip() or 'timm refused it'}); most CNNs take 8, 16 or 32"
            ) from None
    except Exception as error:
        if not pretrained or isinstance(error, UserError):
            raise
        reason = first_line(error)
        raise RuntimeError(
            f"could not load the pretrained weights of timm model '{name}' ({reason}); they are downloaded from "
            "the Hugging Face Hub on first use: connect once, point HF_HOME at a cache that has them, "
            "or set pretrained: false"
        ) from error


def _create_model(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """timm.create_model without a classifier; `img_size` is dropped for models that take any size (CNNs)."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as error:
        if "'img_size'" not in str(error):
            raise
    kwargs = {key: value for key, value in kwargs.items() if key != "img_size"}
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
