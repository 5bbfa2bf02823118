"""Fixtures shared by the test suite (helpers to import are in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import focus_detr
from focus_detr.data.synthetic import SyntheticPaths
from tests.helpers import DATA, MANIFESTS, make_synthetic, write_tiny_checkpoint


@pytest.fixture
def one_thread():
    """One compute thread: on a busy 2-core machine, 2 OpenMP threads can be 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> SyntheticPaths:
    """A small synthetic COCO-format dataset (8 training and 6 validation images); read-only."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "data", num_val=6)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight tiny model saved like ``focus-detr train`` does (8 classes, 64/96)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "model_final.pth")


@pytest.fixture(scope="session")
def dog_image() -> torch.Tensor:
    """The parity fixtures' photo (576x768) as uint8 [3, H, W]."""
    array = np.asarray(Image.open(DATA / "dog.png").convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def r50_float64() -> focus_detr.FocusDETR:
    """R-50 Focus-DETR in float64 with the fixtures' synthetic detrex weights."""
    from focus_detr.weights.parity import read_manifest, synthesize_state_dict

    model = focus_detr.build_model("focus_detr_r50_4scale_12ep", dtype=torch.float64).eval()
    state = synthesize_state_dict(read_manifest(MANIFESTS / "focus_detr_r50.json.gz"))
    focus_detr.load_checkpoint(model, state)
    return model
