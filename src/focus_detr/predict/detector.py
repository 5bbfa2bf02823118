"""One interface for every runtime of the detector, and the one place that picks a runtime.

A :class:`Detector` is what :class:`~focus_detr.Predictor`, :func:`~focus_detr.evaluate`,
``focus-detr predict`` / ``eval`` / ``benchmark`` use: the PyTorch model
(:class:`~focus_detr.FocusDETR`) or an exported graph run by another runtime (ONNX Runtime,
OpenVINO; :mod:`focus_detr.deploy`). What a runtime can do beyond detecting is declared in its
``capabilities`` (:class:`~focus_detr.structures.Capabilities`), never guessed.

:data:`RUNTIMES` lists the runtimes; :func:`runtime_for` chooses one for a weights file (by its
suffix, or by name), and :func:`load_model` opens it. A new runtime is one class (see
:class:`~focus_detr.deploy.exported.ExportedDetector`) plus one row here.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from focus_detr.config import Config, ModelConfig, config_from_dict
from focus_detr.data.categories import Categories
from focus_detr.errors import UsageError
from focus_detr.models.build import build_model
from focus_detr.models.detector import FocusDETR
from focus_detr.presets import get_preset
from focus_detr.structures import Capabilities, ImageBatch
from focus_detr.weights.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
)
from focus_detr.weights.detrex import describe_architecture, is_detrex_layout

__all__ = [
    "RUNTIMES",
    "Capabilities",
    "Detector",
    "LoadedModel",
    "Runtime",
    "capabilities_of",
    "load_model",
    "load_pytorch_model",
    "runtime_for",
]

WeightsSource = str | os.PathLike[str] | Mapping[str, Tensor]


@runtime_checkable
class Detector(Protocol):
    """What every runtime of Focus-DETR gives.

    ``detector(images)`` takes a list of ``uint8 [3, H, W]`` RGB tensors of any sizes (or an
    :class:`~focus_detr.ImageBatch`) and returns one dict per image: ``boxes`` ``[K, 4]`` xyxy
    in that image's pixels, ``scores`` ``[K]``, ``labels`` ``[K]``. Results do not depend on
    the batch. ``config`` is the model's configuration (token budget, test resize);
    ``device`` where inputs go and outputs come from; ``set_keep_ratio`` changes the token
    budget where ``capabilities.adjustable_keep_ratio`` (else it raises ``ValueError``).
    ``capabilities.raw_outputs`` runtimes also answer ``detector(images, raw=True)``.
    """

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, images: ImageBatch | Sequence[Tensor]) -> Any: ...

    def set_keep_ratio(self, keep_ratio: float, cascade: Sequence[float] | None = None) -> None: ...


def capabilities_of(detector: object) -> Capabilities:
    """``detector.capabilities``; a detector of one's own that has only ``config``, ``device``
    and the call (e.g. a wrapper) declares nothing beyond detecting."""
    declared = getattr(detector, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else Capabilities("custom")


@dataclass(frozen=True)
class Runtime:
    """A runtime that can run Focus-DETR.

    Attributes:
        name: what ``--backend`` / ``runtime=`` call it.
        suffixes: weights files it opens by default (lower case).
        capabilities: what its detectors offer (known before a file is opened).
        detector_class: ``module:Class`` of its detectors, whose ``Class.open(path,
            device=..., threads=...)`` opens a file (empty for ``torch``).
    """

    name: str
    suffixes: tuple[str, ...]
    capabilities: Capabilities
    detector_class: str = ""

    def open(
        self, path: str | os.PathLike[str], *, device: torch.device | str, threads: int | None
    ) -> Detector:
        """Open ``path`` with this runtime (not for ``torch``: see :func:`load_model`)."""
        module, _, name = self.detector_class.partition(":")
        opened: Detector = getattr(importlib.import_module(module), name).open(
            path, device=device, threads=threads
        )
        return opened


#: The runtimes, by name. ``torch`` reads checkpoints (anything not claimed by another).
RUNTIMES: dict[str, Runtime] = {
    "torch": Runtime("torch", (), FocusDETR.capabilities),
    "onnxruntime": Runtime(
        "onnxruntime",
        (".onnx",),
        Capabilities("onnxruntime"),
        detector_class="focus_detr.deploy.onnx_runtime:OnnxRuntimeDetector",
    ),
    "openvino": Runtime(
        "openvino",
        (".xml",),
        Capabilities("openvino"),
        detector_class="focus_detr.deploy.openvino_runtime:OpenVinoDetector",
    ),
}


def runtime_for(weights: WeightsSource | None, runtime: str | None = None) -> Runtime:
    """The runtime that runs ``weights``: ``runtime`` when named, else the one whose file
    suffix ``weights`` has (``.onnx``: ONNX Runtime, ``.xml``: OpenVINO), else PyTorch.

    Raises:
        UsageError: an unknown runtime name, or PyTorch asked to run an exported graph.
    """
    suffix = ""
    if isinstance(weights, (str, os.PathLike)):
        suffix = os.path.splitext(os.fspath(weights).split("#")[0])[1].lower()
    by_suffix = next((r for r in RUNTIMES.values() if suffix and suffix in r.suffixes), None)
    if runtime is None:
        return by_suffix or RUNTIMES["torch"]
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {sorted(RUNTIMES)}")
    chosen = RUNTIMES[runtime]
    if chosen.name == "torch" and by_suffix is not None:
        raise UsageError(
            f"{weights} is an exported graph for {by_suffix.name}; PyTorch runs checkpoints"
        )
    return chosen


@dataclass(frozen=True)
class LoadedModel:
    """A PyTorch model with what its weights record.

    Attributes:
        model: the model, in eval mode, on the device asked for.
        categories: names and dataset ids of its classes.
        config: the whole configuration (model as built, train, loss).
        preset: the preset it was built from, when known.
    """

    model: FocusDETR
    categories: Categories
    config: Config
    preset: str | None


def load_model(
    weights: WeightsSource | None = None,
    *,
    preset: str | None = None,
    device: torch.device | str = "cpu",
    keep_ratio: float | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    **overrides: object,
) -> tuple[Detector, Categories]:
    """A detector with its weights, plus the names and ids of its classes.

    The runtime is :func:`runtime_for` ``(weights, runtime)``: PyTorch for checkpoints (the
    configuration comes from ``preset`` or from the checkpoint, see
    :func:`load_pytorch_model`), ONNX Runtime for ``.onnx`` files and OpenVINO for ``.xml``
    (or ``.onnx`` with ``runtime="openvino"``) exported by ``focus-detr export``, whose
    settings are fixed: ``keep_ratio`` and ``overrides`` must then agree with the file.

    Args:
        threads: CPU threads of an exported graph's runtime (default: the runtime's).
    """
    chosen = runtime_for(weights, runtime)
    if chosen.name == "torch":
        loaded = load_pytorch_model(
            weights, preset=preset, device=device, keep_ratio=keep_ratio, **overrides
        )
        return loaded.model, loaded.categories
    if not isinstance(weights, (str, os.PathLike)):
        raise UsageError(f"{chosen.name} runs an exported file; give its path")
    detector = chosen.open(weights, device=device, threads=threads)
    _check_fixed_settings(detector, weights, preset, keep_ratio, overrides)
    metadata = getattr(detector, "metadata", None)
    entries = metadata.categories if metadata is not None else None
    return detector, Categories.from_metadata(entries, detector.config.num_classes)


def load_pytorch_model(
    weights: WeightsSource | Checkpoint | None = None,
    *,
    preset: str | None = None,
    device: torch.device | str = "cpu",
    keep_ratio: float | None = None,
    **overrides: object,
) -> LoadedModel:
    """The PyTorch model of a checkpoint (or of ``preset`` alone, with its initialisation).

    The configuration comes from ``preset`` or, for checkpoints written by this package, from
    the checkpoint itself; detrex releases need ``preset`` (their files do not record e.g. the
    position-embedding settings). ``overrides`` replace model settings.
    """
    checkpoint: Checkpoint | None = None
    if isinstance(weights, Checkpoint):
        checkpoint = weights
    elif weights is not None:
        checkpoint = read_checkpoint(weights)
    config, preset_name = _configuration(checkpoint, preset)
    model_config = config.model
    if overrides:
        model_config = dataclasses.replace(model_config, **overrides)  # type: ignore[arg-type]
    model = build_model(model_config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if keep_ratio is not None:
        model.set_keep_ratio(keep_ratio)
    model = model.to(device).eval()
    categories = Categories.from_metadata(
        checkpoint.metadata.get("categories") if checkpoint else None, model_config.num_classes
    )
    return LoadedModel(
        model, categories, dataclasses.replace(config, model=model.config), preset_name
    )


def _configuration(checkpoint: Checkpoint | None, preset: str | None) -> tuple[Config, str | None]:
    """(configuration, preset name) of a checkpoint: ``preset``'s, else the one it records."""
    recorded = checkpoint.metadata.get("preset") if checkpoint is not None else None
    recorded_preset = recorded if isinstance(recorded, str) and recorded else None
    if preset is not None:
        return get_preset(preset).config, preset
    stored = checkpoint.metadata.get("config") if checkpoint is not None else None
    if isinstance(stored, Mapping) and isinstance(stored.get("model"), Mapping):
        return config_from_dict(dict(stored)), recorded_preset
    if checkpoint is None:
        raise CheckpointError("give a preset or weights that record their configuration")
    layout = "detrex release" if is_detrex_layout(checkpoint.state_dict) else "checkpoint"
    raise CheckpointError(
        f"this {layout} does not record its configuration; name its preset (--preset). "
        f"It looks like: {describe_architecture(checkpoint.state_dict)}"
    )


def _check_fixed_settings(
    detector: Detector,
    path: str | os.PathLike[str],
    preset: str | None,
    keep_ratio: float | None,
    overrides: Mapping[str, object],
) -> None:
    """An exported graph's settings are fixed: refuse any request that differs."""
    from focus_detr.deploy.onnx_contract import ExportedModelError

    metadata = getattr(detector, "metadata", None)
    recorded = metadata.preset if metadata is not None else ""
    if preset is not None and recorded and preset != recorded:
        raise ExportedModelError(f"{path} was exported from preset {recorded}, not {preset}")
    fixed = detector.config.keep_ratio
    if keep_ratio is not None and keep_ratio != fixed:
        raise ExportedModelError(
            f"{path} computes keep ratio {fixed:g} (fixed at export); export again with "
            f"--keep-ratio {keep_ratio:g}"
        )
    if overrides:
        raise ExportedModelError(f"{path} cannot change its settings {sorted(overrides)}")
