"""Shared helpers for the test suite (small models, fixture files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import focus_detr
from focus_detr.config import ModelConfig

DATA = Path(__file__).parent / "data"
MANIFESTS = DATA / "manifests"

# Manifest file of each backbone's released architecture.
MANIFEST_OF_BACKBONE = {
    "resnet50": "focus_detr_r50.json.gz",
    "resnet101": "focus_detr_r101_4scale_12ep.json.gz",
    "swin_tiny": "focus_detr_swin_tiny_224.json.gz",
    "swin_base": "focus_detr_swin_base_384.json.gz",
    "swin_large": "focus_detr_swin_large_384.json.gz",
}


def tiny_config(**changes: object) -> ModelConfig:
    """A small Focus-DETR (ResNet-18 of width 8, 2+2 layers of width 64) for fast tests."""
    settings: dict[str, object] = dict(
        backbone="resnet18",
        backbone_width=8,
        backbone_norm="frozen_bn",
        num_classes=5,
        embed_dim=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        feedforward_dim=128,
        num_queries=30,
        cascade=(1.0, 0.6),
        num_dual_attention_tokens=12,
        num_detections=20,
        num_denoising_queries=10,
    )
    settings.update(changes)
    return ModelConfig(**settings)  # type: ignore[arg-type]


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float parameter and buffer non-trivial values (head biases, norms...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + 0.1 * noise.abs())
            elif tensor.dim() <= 1:
                tensor.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                tensor.copy_(noise / max(1.0, float(np.prod(tensor.shape[1:]))) ** 0.5)
    return model


@pytest.fixture(scope="session")
def dog_image() -> torch.Tensor:
    """The parity fixtures' photo (576x768) as uint8 [3, H, W]."""
    array = np.asarray(Image.open(DATA / "dog.png").convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def r50_float64() -> focus_detr.FocusDETR:
    """R-50 Focus-DETR in float64 with the fixtures' synthetic detrex weights."""
    from focus_detr.parity import read_manifest, synthesize_state_dict

    model = focus_detr.build_model("focus_detr_r50_4scale_12ep", dtype=torch.float64).eval()
    state = synthesize_state_dict(read_manifest(MANIFESTS / "focus_detr_r50.json.gz"))
    focus_detr.load_checkpoint(model, state)
    return model
