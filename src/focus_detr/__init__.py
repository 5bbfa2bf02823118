"""Focus-DETR ("Less is More: Focus Attention for Efficient DETR", ICCV 2023) in plain PyTorch.

Quick use::

    import focus_detr
    model = focus_detr.build_model("focus_detr_r50_4scale_12ep")
    focus_detr.load_checkpoint(model, "focus_detr_r50_4scale_12ep.zip")
    detections = model.eval()(images)   # list of [3, H, W] RGB tensors

The public names below are imported on first use, so that ``import focus_detr`` stays light
(no torchvision, SciPy or COCO evaluation until something needs them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "focus_detr.weights.checkpoint",
    "LoadReport": "focus_detr.weights.checkpoint",
    "load_checkpoint": "focus_detr.weights.checkpoint",
    "Config": "focus_detr.config",
    "ConfigError": "focus_detr.config",
    "LossConfig": "focus_detr.config",
    "ModelConfig": "focus_detr.config",
    "TrainConfig": "focus_detr.config",
    "load_dataset": "focus_detr.data.discovery",
    "evaluate": "focus_detr.engine.evaluator",
    "InitReport": "focus_detr.engine.initialization",
    "initialize_from": "focus_detr.engine.initialization",
    "FocusMap": "focus_detr.predict.focus_maps",
    "compute_focus_maps": "focus_detr.predict.focus_maps",
    "train": "focus_detr.engine.trainer",
    "export_onnx": "focus_detr.deploy.onnx_export",
    "export_openvino": "focus_detr.deploy.openvino_export",
    "Predictor": "focus_detr.predict.predictor",
    "load_model": "focus_detr.predict.detector",
    "Detector": "focus_detr.predict.detector",
    "to_supervision": "focus_detr.integrations.supervision",
    "build_model": "focus_detr.models.build",
    "FocusDETR": "focus_detr.models.detector",
    "Preset": "focus_detr.presets",
    "get_preset": "focus_detr.presets",
    "predict_files": "focus_detr.predict.run",
    "preset_names": "focus_detr.presets",
    "FocusDETROutput": "focus_detr.structures",
    "ImageBatch": "focus_detr.structures",
    "draw_focus_map": "focus_detr.predict.draw_focus",
    "retain_freed_memory": "focus_detr.allocator",
}

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "Detector",
    "FocusDETR",
    "FocusDETROutput",
    "FocusMap",
    "ImageBatch",
    "InitReport",
    "LoadReport",
    "LossConfig",
    "ModelConfig",
    "Predictor",
    "Preset",
    "TrainConfig",
    "__version__",
    "build_model",
    "compute_focus_maps",
    "draw_focus_map",
    "evaluate",
    "export_onnx",
    "export_openvino",
    "get_preset",
    "initialize_from",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "predict_files",
    "preset_names",
    "retain_freed_memory",
    "to_supervision",
    "train",
]

if TYPE_CHECKING:
    from focus_detr.allocator import retain_freed_memory
    from focus_detr.config import Config, ConfigError, LossConfig, ModelConfig, TrainConfig
    from focus_detr.data.discovery import load_dataset
    from focus_detr.deploy.onnx_export import export_onnx
    from focus_detr.deploy.openvino_export import export_openvino
    from focus_detr.engine.evaluator import evaluate
    from focus_detr.engine.initialization import InitReport, initialize_from
    from focus_detr.engine.trainer import train
    from focus_detr.integrations.supervision import to_supervision
    from focus_detr.models.build import build_model
    from focus_detr.models.detector import FocusDETR
    from focus_detr.predict.detector import Detector, load_model
    from focus_detr.predict.draw_focus import draw_focus_map
    from focus_detr.predict.focus_maps import FocusMap, compute_focus_maps
    from focus_detr.predict.predictor import Predictor
    from focus_detr.predict.run import predict_files
    from focus_detr.presets import Preset, get_preset, preset_names
    from focus_detr.structures import FocusDETROutput, ImageBatch
    from focus_detr.weights.checkpoint import CheckpointError, LoadReport, load_checkpoint


def lazy_attributes(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` that import ``exports`` (name -> module)
    on first use and keep them in ``namespace`` (the package's ``globals()``)."""

    def get(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted([*namespace, *exports])

    return get, names


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
