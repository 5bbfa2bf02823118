"""Focus-DETR ("Less is More: Focus Attention for Efficient DETR", ICCV 2023) in plain PyTorch.

Quick use::

    import focus_detr
    model = focus_detr.build_model("focus_detr_r50_4scale_12ep")
    focus_detr.load_checkpoint(model, "focus_detr_r50_4scale_12ep.zip")
    detections = model.eval()(images)   # list of [3, H, W] RGB tensors
"""

from focus_detr.checkpoint import CheckpointError, LoadReport, load_checkpoint
from focus_detr.config import Config, ConfigError, ModelConfig, TrainConfig
from focus_detr.engine.evaluator import evaluate
from focus_detr.engine.trainer import train
from focus_detr.inference import Predictor, load_model
from focus_detr.models.build import build_model
from focus_detr.models.detector import FocusDETR
from focus_detr.presets import Preset, get_preset, preset_names
from focus_detr.structures import FocusDETROutput, ImageBatch

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "FocusDETR",
    "FocusDETROutput",
    "ImageBatch",
    "LoadReport",
    "ModelConfig",
    "Predictor",
    "Preset",
    "TrainConfig",
    "__version__",
    "build_model",
    "evaluate",
    "get_preset",
    "load_checkpoint",
    "load_model",
    "preset_names",
    "train",
]
