"""Channel mapper: project backbone levels to the transformer width, plus one extra level.

Per backbone level a 1x1 convolution (with bias) and GroupNorm(32); the extra coarser level is a
3x3 stride-2 convolution on the LAST BACKBONE feature (not on its projection) and GroupNorm.
GroupNorm statistics are taken over each image's valid area only, so padding a batch changes
nothing (see :func:`focus_detr.models.masking.masked_group_norm`).
"""

from __future__ import annotations

from torch import Tensor, nn

from focus_detr.models.masking import masked_group_norm, optional_valid_sizes


class ConvGroupNorm(nn.Module):
    """Convolution (with bias) followed by GroupNorm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
        )
        self.norm = nn.GroupNorm(groups, out_channels)
        nn.init.xavier_uniform_(self.conv.weight)
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, valid_sizes: Tensor | None) -> Tensor:
        return masked_group_norm(self.conv(x), self.norm, valid_sizes)


class ChannelMapper(nn.Module):
    """Backbone features ``[B, C_i, H_i, W_i]`` -> ``num_levels`` maps of ``out_channels``.

    Args:
        in_channels: channels of each backbone level (finest first).
        in_strides: pixel stride of each backbone level.
        out_channels: transformer width.
        num_levels: total output levels (>= number of backbone levels).
        num_groups: GroupNorm groups.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        out_channels: int = 256,
        num_levels: int = 4,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError("num_levels must be at least the number of backbone levels")
        self.input_projections = nn.ModuleList(
            ConvGroupNorm(c, out_channels, 1, 1, num_groups) for c in in_channels
        )
        extra = []
        for index in range(num_levels - len(in_channels)):
            source = in_channels[-1] if index == 0 else out_channels
            extra.append(ConvGroupNorm(source, out_channels, 3, 2, num_groups))
        self.extra_projections = nn.ModuleList(extra)
        strides = list(in_strides)
        for _ in extra:
            strides.append(strides[-1] * 2)
        self.strides: tuple[int, ...] = tuple(strides)

    def forward(self, features: list[Tensor], image_sizes: Tensor | None = None) -> list[Tensor]:
        """Backbone levels (zero on padding) -> projected levels (zero on padding)."""
        outputs = []
        for feature, projection, stride in zip(features, self.input_projections, self.strides):
            outputs.append(projection(feature, optional_valid_sizes(image_sizes, stride)))
        previous = features[-1]
        for index, projection in enumerate(self.extra_projections):
            stride = self.strides[len(features) + index]
            # zero on padding, as the next extra level's 3x3 convolution requires
            previous = projection(previous, optional_valid_sizes(image_sizes, stride))
            outputs.append(previous)
        return outputs
