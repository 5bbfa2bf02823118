"""ResNet in detectron2's layout (the layout of the released Focus-DETR checkpoints).

Differences from torchvision's ResNet: the stride sits in the 3x3 convolution
(``stride_in_1x1=False``), every convolution owns its norm (``conv.norm``), normalisation is a
frozen affine BatchNorm (no ``num_batches_tracked``), and the stages are named ``res2..res5``.

Padding: every 3x3 convolution and the stem's max-pool read only zeros outside each image's
valid area (see :mod:`focus_detr.models.masking`), so a padded batch equals one-image runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.models.masking import optional_valid_sizes, zero_padding

_STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers, as in detectron2)."""

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            # one fused op, as detectron2 does when no gradient is needed
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown ResNet norm {kind!r}; use 'frozen_bn' or 'bn'")


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its norm (detectron2's ``Conv2d(norm=...)``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.norm = _norm(norm, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d) and not torch.is_grad_enabled():
            # inference: fold the frozen affine normalisation into the convolution
            scale = self.norm.weight * (self.norm.running_var + self.norm.eps).rsqrt()
            shift = self.norm.bias - self.norm.running_mean * scale
            weight = self.weight * scale.view(-1, 1, 1, 1).to(self.weight.dtype)
            return self._conv_forward(x, weight, shift.to(self.weight.dtype))
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 residual block."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck: int, stride: int, norm: str
    ) -> None:
        super().__init__()
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride, norm)
            if in_channels != out_channels
            else None
        )
        self.conv1 = ConvNorm(in_channels, bottleneck, 1, 1, norm)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride, norm)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1, 1, norm)

    def forward(self, x: Tensor, valid_sizes: Tensor | None) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(zero_padding(out, valid_sizes)))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        # in place: neither the convolutions' nor the norms' backward needs these outputs
        return F.relu_(out.add_(shortcut))


class BasicBlock(nn.Module):
    """3x3 (strided) -> 3x3 residual block (ResNet-18/34)."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck: int, stride: int, norm: str
    ) -> None:
        super().__init__()
        del bottleneck
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride, norm)
            if in_channels != out_channels or stride != 1
            else None
        )
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride, norm)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, 1, norm)

    def forward(self, x: Tensor, valid_sizes: Tensor | None) -> Tensor:
        out = F.relu_(self.conv1(zero_padding(x, valid_sizes)))
        out = self.conv2(zero_padding(out, optional_valid_sizes(valid_sizes, self.conv1.stride[0])))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out.add_(shortcut))


class Stem(nn.Module):
    """7x7 stride-2 convolution, ReLU, 3x3 stride-2 max-pool."""

    def __init__(self, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, 2, norm)

    def forward(self, x: Tensor, image_sizes: Tensor | None) -> Tensor:
        x = F.relu_(self.conv1(x))
        # After ReLU every value is >= 0, so zeros in the padding never win the max over a
        # window that holds a valid position: the same as the lone image's -inf padding.
        x = zero_padding(x, optional_valid_sizes(image_sizes, 2))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet-18/34/50/101 returning ``res3, res4, res5`` (strides 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        width: stem channels (64 for the standard networks; every stage scales with it).
        norm: ``"frozen_bn"`` (released models) or ``"bn"`` (trainable, for from-scratch runs).
        frozen_stages: 0 = nothing frozen, 1 = stem frozen (detrex default), k = stem and the
            first k-1 stages frozen.
    """

    def __init__(
        self, depth: int, *, width: int = 64, norm: str = "frozen_bn", frozen_stages: int = 1
    ) -> None:
        super().__init__()
        if depth not in _STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGE_BLOCKS)}, got {depth}")
        bottleneck_blocks = depth >= 50
        block_class = BottleneckBlock if bottleneck_blocks else BasicBlock
        expansion = 4 if bottleneck_blocks else 1
        self.stem = Stem(width, norm)
        in_channels = width
        stage_channels = []
        for index, num_blocks in enumerate(_STAGE_BLOCKS[depth]):
            bottleneck = width * 2**index
            out_channels = bottleneck * expansion
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if block_index == 0 and index > 0 else 1
                blocks.append(block_class(in_channels, out_channels, bottleneck, stride, norm))
                in_channels = out_channels
            self.add_module(f"res{index + 2}", nn.ModuleList(blocks))
            stage_channels.append(out_channels)
        self.out_channels: tuple[int, ...] = tuple(stage_channels[1:])
        self.strides: tuple[int, ...] = (8, 16, 32)
        self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        modules: list[nn.Module] = [self.stem] if frozen_stages >= 1 else []
        modules += [getattr(self, f"res{i + 2}") for i in range(max(0, frozen_stages - 1))]
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def forward(self, pixels: Tensor, image_sizes: Tensor | None = None) -> list[Tensor]:
        """``[B, 3, H, W]`` normalised pixels (zero on padding) -> ``[res3, res4, res5]``.

        ``image_sizes`` ``[B, 2]`` gives each image's valid (height, width); the outputs are
        zero outside each image's valid area.
        """
        # channels-last activations: faster convolutions (oneDNN / cuDNN), and the neck's
        # outputs then flatten into tokens without a copy
        x = self.stem(pixels.contiguous(memory_format=torch.channels_last), image_sizes)
        outputs = []
        for index, stage_stride in enumerate((4, 8, 16, 32)):
            for block_index, block in enumerate(getattr(self, f"res{index + 2}")):
                first_strided = block_index == 0 and index > 0
                input_stride = stage_stride // 2 if first_strided else stage_stride
                x = block(x, optional_valid_sizes(image_sizes, input_stride))
            if index > 0:
                outputs.append(zero_padding(x, optional_valid_sizes(image_sizes, stage_stride)))
        return outputs


def convert_torchvision_resnet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ImageNet ResNet state dict (``resnet50-*.pth``) to this layout.

    ``conv1/bn1`` -> ``stem.conv1(.norm)``, ``layerK.i.convJ/bnJ`` -> ``res{K+1}.i.convJ(.norm)``,
    ``downsample.0/1`` -> ``shortcut(.norm)``; the classifier (``fc.*``) and
    ``num_batches_tracked`` are dropped.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = key
        if new.startswith("conv1."):
            new = "stem.conv1." + new[len("conv1.") :]
        elif new.startswith("bn1."):
            new = "stem.conv1.norm." + new[len("bn1.") :]
        elif new.startswith("layer"):
            stage, rest = new[len("layer") :].split(".", 1)
            new = f"res{int(stage) + 1}.{rest}"
            new = new.replace(".downsample.0.", ".shortcut.").replace(
                ".downsample.1.", ".shortcut.norm."
            )
            for j in (1, 2, 3):
                new = new.replace(f".bn{j}.", f".conv{j}.norm.")
        else:
            raise ValueError(f"unexpected key {key!r} in a torchvision ResNet state dict")
        converted[new] = value
    return converted
