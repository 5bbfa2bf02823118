"""ImageNet initialisation of a backbone: torchvision ResNet or official Swin weights."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import Tensor, nn

from focus_detr.errors import CheckpointError
from focus_detr.weights.checkpoint import read_state_dict

__all__ = ["BackboneLoadReport", "load_backbone_weights"]


@dataclass
class BackboneLoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        source: the file.
        kind: ``torchvision-resnet`` or ``swin``.
        loaded: backbone keys that received a value.
        missing: backbone keys the file does not provide (keep their initialisation).
        unexpected: converted keys the backbone does not have.
        mismatched: keys whose shapes differ (not loaded).
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the log."""
        lines = [f"backbone weights {self.source} ({self.kind}): {len(self.loaded)} tensors loaded"]
        for title, items in (
            ("not in the file (left as initialised)", self.missing),
            ("in the file but not in the backbone", self.unexpected),
            ("shape mismatch (skipped)", self.mismatched),
        ):
            if items:
                shown = ", ".join(items[:8]) + (
                    f", ... ({len(items)} in all)" if len(items) > 8 else ""
                )
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


def load_backbone_weights(model: nn.Module, source: str | os.PathLike[str]) -> BackboneLoadReport:
    """ImageNet initialisation of ``model.backbone`` from a local file.

    Accepts a torchvision ResNet state dict (``resnet50-*.pth``) for ResNet backbones and an
    official Swin classification checkpoint for Swin backbones.

    Raises:
        CheckpointError: if the file does not fit the backbone at all.
    """
    from focus_detr.models.backbone_resnet import convert_torchvision_resnet
    from focus_detr.models.backbone_swin import convert_official_swin_checkpoint

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    backbone: nn.Module = model.backbone  # type: ignore[assignment]
    state = read_state_dict(source)
    is_swin = "patch_embed.proj.weight" in state
    try:
        if is_swin:
            converted, kind = convert_official_swin_checkpoint(state), "swin"
        else:
            converted, kind = convert_torchvision_resnet(state), "torchvision-resnet"
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
    return _load_into(backbone, converted, str(source), kind)


def _load_into(
    backbone: nn.Module, converted: dict[str, Tensor], source: str, kind: str
) -> BackboneLoadReport:
    expected = backbone.state_dict()
    report = BackboneLoadReport(source=source, kind=kind)
    usable = {}
    for key, value in converted.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}")
        else:
            usable[key] = value
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in expected if k not in usable and not _is_derived(k))
    if not usable:
        raise CheckpointError(f"{source} has no tensor that fits the backbone:\n{report.summary()}")
    backbone.load_state_dict(usable, strict=False)
    return report


def _is_derived(key: str) -> bool:
    """Buffers that are not weights (e.g. BatchNorm step counters)."""
    return key.endswith("num_batches_tracked")
