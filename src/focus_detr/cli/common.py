"""What the subcommands share: option types that validate, the common options, the device."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

# Re-exported: the commands raise it for bad usage; ``main`` prints it as one line.
from focus_detr.errors import UsageError

__all__ = [
    "UsageError",
    "add_batch_size",
    "add_device",
    "add_model_source",
    "add_test_resize",
    "check_weights_file",
    "default_device",
    "image_size",
    "keep_ratio",
    "positive_int",
    "probability",
]

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".zip", ".safetensors", ".bin", ".ckpt")

#: ``focus_detr.predict.RUNTIMES`` by name (kept here so that the parser imports no torch;
#: a test checks that they agree).
RUNTIME_NAMES = ("torch", "onnxruntime", "openvino")


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a score threshold)."""
    value = _number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def keep_ratio(text: str) -> float:
    """The encoder keep ratio: a number in (0, 1]."""
    value = _number(float, text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``800x1333``), both positive."""
    parts = text.lower().split("x")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 800x1333, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"both sides must be positive, got {text!r}")
    return height, width


def check_weights_file(weights: str) -> None:
    """Refuse a ``--weights`` folder (it would fail deep inside loading), naming the
    checkpoints it holds."""
    folder = Path(weights).expanduser()
    if "://" in weights or not folder.is_dir():
        return
    found = sorted(p.name for p in folder.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES)
    holds = f"it holds {', '.join(found)}" if found else "it holds no checkpoint file"
    raise UsageError(f"--weights {weights} is a folder; give a checkpoint file ({holds})")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: CUDA when available)."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")


def add_model_source(parser: argparse.ArgumentParser, *, keep_ratio_help: str) -> None:
    """``--weights`` / ``--preset`` / ``--keep-ratio``: which model, and its token budget."""
    parser.add_argument(
        "--weights",
        required=True,
        help="checkpoint (path, .zip or URL), or an exported .onnx / OpenVINO .xml",
    )
    parser.add_argument("--preset", help="model preset (required for detrex releases)")
    parser.add_argument("--keep-ratio", type=keep_ratio, help=keep_ratio_help)


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend``: the runtime (default: chosen from the weights file)."""
    parser.add_argument(
        "--backend",
        choices=RUNTIME_NAMES,
        help="runtime (default: from --weights: .onnx ONNX Runtime, .xml OpenVINO, else "
        "PyTorch); openvino also runs a .onnx file",
    )


def add_batch_size(parser: argparse.ArgumentParser, help: str = "images per forward") -> None:
    """``--batch-size`` (default 1)."""
    parser.add_argument("--batch-size", type=positive_int, default=1, help=help)


def add_test_resize(parser: argparse.ArgumentParser) -> None:
    """``--min-size`` / ``--max-size``: the test resize (default: the model's recipe)."""
    parser.add_argument(
        "--min-size", type=positive_int, help="short side after resizing (default: the recipe's)"
    )
    parser.add_argument(
        "--max-size", type=positive_int, help="long side limit (default: the recipe's)"
    )
