"""Building blocks of the Swin Transformer (windows, window attention, blocks, patch merging).

See :mod:`focus_detr.models.backbone_swin` for the backbone and how padded batches stay exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focus_detr.models.export_mode import is_exporting
from focus_detr.models.masking import needs_masking, padding_mask_from_sizes, valid_sizes_at_stride

MLP_RATIO = 4
MASK_VALUE = -100.0  # additive attention mask of the official Swin code


def drop_path(features: Tensor, probability: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples with ``probability``, rescale the others."""
    if probability == 0.0 or not training:
        return features
    keep_probability = 1.0 - probability
    shape = (features.shape[0],) + (1,) * (features.dim() - 1)
    keep = features.new_empty(shape).bernoulli_(keep_probability) / keep_probability
    return features * keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (identity in eval mode)."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.probability = probability

    def forward(self, features: Tensor) -> Tensor:
        return drop_path(features, self.probability, self.training)

    def extra_repr(self) -> str:
        return f"probability={self.probability:.3f}"


def num_windows(length: int, window_size: int) -> int:
    """Windows along an axis of ``length`` positions: ``ceil(length / window_size)``.

    Written as one floor division so that, while ``torch.export`` traces, every size derived
    from it stays a short expression the tracer can reason about (``math.ceil`` or
    ``length + (-length) % w`` grow nested expressions that take it hours on Swin).
    """
    return (length + window_size - 1) // window_size


def pad_to_windows(features: Tensor, window_size: int) -> Tensor:
    """Zero-pad ``[B, H, W, C]`` at the bottom/right to whole windows."""
    height, width = features.shape[1:3]
    rows, cols = num_windows(height, window_size), num_windows(width, window_size)
    return F.pad(features, (0, 0, 0, cols * window_size - width, 0, rows * window_size - height))


def window_partition(features: Tensor, window_size: int) -> Tensor:
    """Split ``[B, H, W, C]`` (H, W multiples of the window) into ``[B * nW, w * w, C]``.

    Windows are ordered image-major, then row-major over the window grid.
    """
    batch, height, width, channels = features.shape
    rows, cols = height // window_size, width // window_size
    grid = features.view(batch, rows, window_size, cols, window_size, channels)
    windows = grid.permute(0, 1, 3, 2, 4, 5).contiguous()
    return windows.view(batch * rows * cols, window_size * window_size, channels)


def window_merge(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, w * w, C]`` -> ``[B, H, W, C]``."""
    channels = windows.shape[-1]
    rows, cols = height // window_size, width // window_size
    batch = windows.shape[0] // (rows * cols)
    grid = windows.view(batch, rows, cols, window_size, window_size, channels)
    merged = grid.permute(0, 1, 3, 2, 4, 5).contiguous()
    return merged.view(batch, rows * window_size, cols * window_size, channels)


def crop(features: Tensor, height: int, width: int) -> Tensor:
    """The top-left ``[B, height, width, C]`` of ``[B, H, W, C]`` (contiguous).

    Under export the crop gathers rows and columns: a slice would make the tracer prove
    ``height <= H`` for every input size, which it cannot for window-padded sizes.
    """
    if not is_exporting():
        return features[:, :height, :width].contiguous()
    rows = torch.arange(height, device=features.device)
    cols = torch.arange(width, device=features.device)
    return features.index_select(1, rows).index_select(2, cols)


def relative_position_index(window_size: int) -> Tensor:
    """``[w * w, w * w]`` int64 index into the ``(2w - 1)^2`` relative position bias table."""
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, N]
    delta = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # [2, N, N], >= 0
    return delta[0] * (2 * window_size - 1) + delta[1]


def shifted_window_mask(
    padded_height: int, padded_width: int, window_size: int, shift_size: int, like: Tensor
) -> Tensor:
    """``[nW, N, N]`` additive mask (0 / -100) of the shifted windows of one canvas.

    After the cyclic roll by ``-shift_size`` the last window along each axis mixes tokens
    from both ends of the canvas; tokens only attend to tokens of their own region.
    """

    def regions(length: int) -> Tensor:
        position = torch.arange(length, device=like.device)
        return (position >= length - window_size).long() + (position >= length - shift_size).long()

    labels = regions(padded_height)[:, None] * 3 + regions(padded_width)[None, :]
    labels = window_partition(labels[None, :, :, None], window_size).squeeze(-1)  # [nW, N]
    different = labels[:, None, :] != labels[:, :, None]
    mask = torch.zeros(different.shape, dtype=like.dtype, device=like.device)
    return mask.masked_fill(different, MASK_VALUE)


def outside_canvas_key_mask(
    valid_sizes: Tensor, padded_height: int, padded_width: int, window_size: int, shift_size: int
) -> Tensor | None:
    """``[B, nW, 1, N]`` bool, True on keys outside each image's own window-padded canvas.

    Positions are those of the shifted windows (rolled by ``-shift_size``). ``None`` when
    every image's canvas is the whole batch canvas.
    """
    canvas_sizes = valid_sizes_at_stride(valid_sizes, window_size) * window_size
    if not needs_masking(canvas_sizes, padded_height, padded_width):
        return None
    outside = padding_mask_from_sizes(canvas_sizes, padded_height, padded_width)
    if shift_size > 0:
        outside = torch.roll(outside, shifts=(-shift_size, -shift_size), dims=(1, 2))
    windows = window_partition(outside[..., None], window_size)  # [B * nW, N, 1]
    return windows.view(valid_sizes.shape[0], -1, 1, window_size * window_size)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    relative_position_index: Tensor

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Attend within each window.

        Args:
            windows: ``[B * nW, N, C]`` tokens of every window (N = window_size ** 2).
            attention_mask: ``[1 or B, nW, N, N]`` additive mask (0 / -100), or None.

        Returns:
            ``[B * nW, N, C]``.
        """
        num_windows_total, num_tokens, channels = windows.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(windows).reshape(num_windows_total, num_tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B * nW, heads, N, d]
        logits = (query * self.scale) @ key.transpose(-2, -1)
        index = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[index]
        bias = bias.view(num_tokens, num_tokens, -1).permute(2, 0, 1).contiguous()
        logits = logits + bias.unsqueeze(0)
        if attention_mask is not None:
            windows_per_image = attention_mask.shape[1]
            batch = num_windows_total // windows_per_image
            grouped = logits.view(batch, windows_per_image, self.num_heads, num_tokens, num_tokens)
            logits = (grouped + attention_mask.unsqueeze(2)).view_as(logits)
        weights = logits.softmax(dim=-1)
        attended = (weights @ value).transpose(1, 2).reshape(num_windows_total, num_tokens, -1)
        return self.proj(attended)


class Mlp(nn.Module):
    """Feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(features)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block followed by a pre-norm MLP block."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, drop_path_rate: float
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(
        self, features: Tensor, padding_mask: Tensor | None, attention_mask: Tensor | None
    ) -> Tensor:
        """Args:
            features: ``[B, H, W, C]``.
            padding_mask: ``[B, H, W]`` bool, True outside each image, or None (no padding).
            attention_mask: ``[1 or B, nW, N, N]`` additive mask of the shifted windows of the
                window-padded canvas (see :class:`SwinStage`); None for unshifted blocks
                without padding.

        Returns:
            ``[B, H, W, C]``.
        """
        _, height, width, _ = features.shape
        window, shift = self.window_size, self.shift_size
        normed = self.norm1(features)
        if padding_mask is not None:
            normed = normed.masked_fill(padding_mask[..., None], 0.0)
        normed = pad_to_windows(normed, window)
        padded_height, padded_width = normed.shape[1:3]
        if shift > 0:
            normed = torch.roll(normed, shifts=(-shift, -shift), dims=(1, 2))
        windows = self.attn(window_partition(normed, window), attention_mask)
        attended = window_merge(windows, window, padded_height, padded_width)
        if shift > 0:
            attended = torch.roll(attended, shifts=(shift, shift), dims=(1, 2))
        attended = crop(attended, height, width)
        features = features + self.drop_path(attended)
        return features + self.drop_path(self.mlp(self.norm2(features)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, features: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, ceil(H / 2), ceil(W / 2), 2C]`` (odd sizes zero-padded)."""
        if padding_mask is not None:
            features = features.masked_fill(padding_mask[..., None], 0.0)
        batch, height, width, channels = features.shape
        rows, cols = num_windows(height, 2), num_windows(width, 2)
        if is_exporting() or height % 2 == 1 or width % 2 == 1:  # exporting: parity unknown
            features = F.pad(features, (0, 0, 0, 2 * cols - width, 0, 2 * rows - height))
        # each 2x2 neighbourhood's channels in Swin's order of (row, col) offsets:
        # (0, 0), (1, 0), (0, 1), (1, 1)
        quads = features.reshape(batch, rows, 2, cols, 2, channels).permute(0, 1, 3, 4, 2, 5)
        merged = quads.reshape(batch, rows, cols, 4 * channels)
        return self.reduction(self.norm(merged))
