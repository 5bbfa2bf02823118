"""Swin Transformer backbone (Liu et al., ICCV 2021) in detectron2's parameter layout.

Focus-DETR's Swin models use detectron2's ``SwinTransformer`` (patch size 4, MLP ratio 4, qkv
bias, no absolute position embedding, LayerNorm after the patch embedding) and read stages
1..3 (strides 8, 16, 32), each through its own output LayerNorm ``norm{i}``. The state-dict
keys of :class:`SwinTransformer` are exactly detectron2's, so detrex checkpoints load as is.

Padded batches. Every image of a bottom/right zero-padded batch gets, on its valid area, the
features it gets alone (float64: equal to ~1e-15). A lone image of ``h`` pixels covers
``ceil(h / s)`` positions at stride ``s`` and pads them to a multiple of the window with zeros
*after* ``norm1`` (and to an even size with zeros before each patch merging). The batched
forward therefore (a) zeroes every position outside an image's valid area after ``norm1`` and
before merging, and (b) in shifted-window blocks adds -100 (Swin's mask value) to attention
keys that lie outside the image's own window-padded canvas. Why (b) is enough: along one axis,
with lone canvas ``P_i`` and batch canvas ``P`` (both multiples of the window ``w``), the roll by
``-s`` puts the same tokens at the same places in both, except that the lone image's last
window holds the wrapped tokens ``[0, s)`` in its last ``s`` slots while the batch holds tokens
``[P_i, P_i + s)`` there (and the wrapped tokens sit in the batch's last window, which the
regular shift mask already isolates). The lone shift mask keeps the first ``w - s`` slots of
that window from seeing the wrapped ones; masking keys at positions ``>= P_i`` does the same in
the batch. Non-shifted windows of the lone canvas are windows of the batch canvas, unchanged.
Without padding none of this runs: the forward is the plain Swin computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.models.export_mode import is_exporting
from focus_detr.models.masking import (
    needs_masking,
    optional_valid_sizes,
    padding_mask_from_sizes,
    zero_padding,
)
from focus_detr.models.swin_layers import (
    MASK_VALUE,
    PatchMerging,
    SwinBlock,
    num_windows,
    outside_canvas_key_mask,
    shifted_window_mask,
)

__all__ = [
    "SwinTransformer",
    "convert_official_swin_checkpoint",
    "swin_config",
]

PATCH_SIZE = 4

_SWIN_CONFIGS: dict[str, dict[str, int | tuple[int, ...]]] = {
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "swin_large": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
}


def swin_config(name: str) -> dict:
    """``embed_dim``, ``depths`` and ``num_heads`` of a standard Swin size.

    Args:
        name: ``"swin_tiny"``, ``"swin_small"``, ``"swin_base"`` or ``"swin_large"``.

    Returns:
        Keyword arguments for :class:`SwinTransformer`; add ``window_size`` (7 for the
        224-pixel ImageNet weights, 12 for the 384-pixel ones) and ``drop_path_rate``.
    """
    if name not in _SWIN_CONFIGS:
        raise ValueError(f"unknown Swin size {name!r}; expected one of {sorted(_SWIN_CONFIGS)}")
    return dict(_SWIN_CONFIGS[name])


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path_rates: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, rate)
            for i, rate in enumerate(drop_path_rates[:depth])
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, features: Tensor, valid_sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Args:
            features: ``[B, H, W, C]``.
            valid_sizes: ``[B, 2]`` int64 valid (height, width) of each image at this stride,
                or None when nothing is padded.

        Returns:
            The stage output ``[B, H, W, C]`` and the input of the next stage
            (``[B, ceil(H / 2), ceil(W / 2), 2C]``; the stage output itself for the last stage).
        """
        height, width = features.shape[1:3]
        padding_mask = None
        if needs_masking(valid_sizes, height, width):
            assert valid_sizes is not None
            padding_mask = padding_mask_from_sizes(valid_sizes, height, width)
        shifted_mask = self._shifted_attention_mask(features, valid_sizes, padding_mask)
        blocks: list[SwinBlock] = list(self.blocks)  # type: ignore[arg-type]
        for block in blocks:
            mask = shifted_mask if block.shift_size > 0 else None
            features = block(features, padding_mask, mask)
        if self.downsample is None:
            return features, features
        return features, self.downsample(features, padding_mask)

    def _shifted_attention_mask(
        self, features: Tensor, valid_sizes: Tensor | None, padding_mask: Tensor | None
    ) -> Tensor | None:
        """``[1 or B, nW, N, N]`` mask of the shifted blocks (per image only with padding)."""
        window = self.window_size
        if self.shift_size == 0 or len(self.blocks) < 2:
            return None
        padded_height = num_windows(features.shape[1], window) * window
        padded_width = num_windows(features.shape[2], window) * window
        mask = shifted_window_mask(padded_height, padded_width, window, self.shift_size, features)
        mask = mask.unsqueeze(0)
        if padding_mask is None or valid_sizes is None:
            return mask
        outside_keys = outside_canvas_key_mask(
            valid_sizes, padded_height, padded_width, window, self.shift_size
        )
        if outside_keys is None:
            return mask
        return mask.masked_fill(outside_keys, MASK_VALUE)


class PatchEmbedding(nn.Module):
    """Non-overlapping 4x4 patches -> ``embed_dim`` channels, then LayerNorm."""

    def __init__(self, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixels: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, ceil(H / 4), ceil(W / 4), C]`` (input zero-padded to x4)."""
        height, width = pixels.shape[-2:]
        rows, cols = num_windows(height, PATCH_SIZE), num_windows(width, PATCH_SIZE)
        pixels = F.pad(pixels, (0, cols * PATCH_SIZE - width, 0, rows * PATCH_SIZE - height))
        return self.norm(self.proj(pixels).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin backbone returning stages 1..3 (strides 8, 16, 32).

    Attributes:
        out_indices: stages whose outputs are returned, each through LayerNorm ``norm{i}``.
        out_channels: channels of each returned map, ``embed_dim * 2 ** i``.
        strides: pixel stride of each returned map, ``4 * 2 ** i``.
        export_has_unproven_shape_facts: the ONNX export traces it with facts about its window
            grids that PyTorch's tracer cannot prove for every size, and that only choose
            memory layouts (see :func:`focus_detr.deploy.onnx_export.trace_to_onnx`).
    """

    export_has_unproven_shape_facts = True

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: int,
        drop_path_rate: float = 0.2,
        out_indices: Sequence[int] = (1, 2, 3),
    ) -> None:
        super().__init__()
        depths, num_heads, out_indices = tuple(depths), tuple(num_heads), tuple(out_indices)
        _check_arguments(embed_dim, depths, num_heads, window_size, drop_path_rate, out_indices)
        self.patch_embed = PatchEmbedding(embed_dim)
        # Linearly increasing stochastic depth over all blocks (float32 linspace, as upstream).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(
                dim=embed_dim * 2**i,
                depth=depth,
                num_heads=heads,
                window_size=window_size,
                drop_path_rates=rates[start : start + depth],
                downsample=i < len(depths) - 1,
            )
            for i, (depth, heads, start) in enumerate(zip(depths, num_heads, starts))
        )
        for i in out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
        self.out_indices = out_indices
        self.out_channels = tuple(embed_dim * 2**i for i in out_indices)
        self.strides = tuple(PATCH_SIZE * 2**i for i in out_indices)
        self.apply(_init_weights)

    def forward(self, pixels: Tensor, image_sizes: Tensor | None = None) -> list[Tensor]:
        """Multi-scale features.

        Args:
            pixels: ``[B, 3, H, W]`` normalised images, zero on padding (bottom/right).
            image_sizes: ``[B, 2]`` int64 valid (height, width) of each image; None means no
                padding. With it, each image gets the features it would get alone.

        Returns:
            One ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]`` map per ``out_indices`` entry
            (``C_i = out_channels[i]``, ``s_i = strides[i]``), zero outside each image.
        """
        _check_inputs(pixels, image_sizes)
        if image_sizes is not None and not needs_masking(image_sizes, *pixels.shape[-2:]):
            image_sizes = None
        features = self.patch_embed(pixels)
        outputs = []
        for index in range(max(self.out_indices) + 1):
            valid_sizes = optional_valid_sizes(image_sizes, PATCH_SIZE * 2**index)
            stage_output, features = self.layers[index](features, valid_sizes)
            if index in self.out_indices:
                normed = getattr(self, f"norm{index}")(stage_output)
                outputs.append(zero_padding(normed.permute(0, 3, 1, 2).contiguous(), valid_sizes))
        return outputs


def _check_arguments(
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window_size: int,
    drop_path_rate: float,
    out_indices: tuple[int, ...],
) -> None:
    if not depths or len(depths) != len(num_heads):
        raise ValueError(
            f"depths {depths} and num_heads {num_heads} must be non-empty, same length"
        )
    if min(depths) < 1 or window_size < 1 or embed_dim < 1:
        raise ValueError("embed_dim, window_size and every depth must be positive")
    for i, heads in enumerate(num_heads):
        if heads < 1 or (embed_dim * 2**i) % heads:
            raise ValueError(f"stage {i}: {embed_dim * 2**i} channels not divisible by {heads}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if not out_indices or list(out_indices) != sorted(set(out_indices)):
        raise ValueError(f"out_indices must be non-empty, increasing, unique: {out_indices}")
    if out_indices[0] < 0 or out_indices[-1] >= len(depths):
        raise ValueError(f"out_indices {out_indices} out of range for {len(depths)} stages")


def _check_inputs(pixels: Tensor, image_sizes: Tensor | None) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}")
    if image_sizes is None:
        return
    if image_sizes.shape != (pixels.shape[0], 2) or image_sizes.is_floating_point():
        raise ValueError(
            f"image_sizes must be an integer [{pixels.shape[0]}, 2] tensor, "
            f"got {image_sizes.dtype} {tuple(image_sizes.shape)}"
        )
    if is_exporting():  # values are unknown while tracing; the deployed graph trusts its input
        return
    canvas = torch.tensor(pixels.shape[-2:], device=image_sizes.device)
    if bool(((image_sizes < 1) | (image_sizes > canvas)).any()):
        raise ValueError(f"image_sizes must lie in [1, {tuple(canvas.tolist())}]: {image_sizes}")


def _init_weights(module: nn.Module) -> None:
    """Upstream initialisation: truncated-normal Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def convert_official_swin_checkpoint(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official Microsoft Swin ImageNet checkpoint onto :class:`SwinTransformer`.

    The official classification checkpoints (``swin_*_patch4_window*_*.pth``) use the same
    block names. Dropped: the classifier ``head.*``, the final ``norm.*`` and the
    ``attn_mask`` buffers; ``relative_position_index`` is kept. A ``{"model": {...}}``
    wrapper is unwrapped.

    Our keys it does not provide (they keep their initialisation, LayerNorm weight 1 and
    bias 0): the per-output norms ``norm{i}.weight`` / ``norm{i}.bias`` for each of
    ``out_indices``. Load the result with ``load_state_dict(..., strict=False)``; the window
    size of the model must match the checkpoint's (bias table shapes).

    Raises:
        ValueError: if the dict does not look like a Swin checkpoint.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not a Swin checkpoint: no 'patch_embed.proj.weight' key")
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
            continue
        if not key.startswith(("patch_embed.", "layers.")):
            raise ValueError(f"unexpected key in a Swin checkpoint: {key!r}")
        converted[key] = value
    return converted
