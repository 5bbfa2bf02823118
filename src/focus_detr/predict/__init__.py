"""Prediction: one :class:`Detector` interface for every runtime, and what runs on it.

- :mod:`.detector`: the :class:`Detector` protocol, the runtimes (:data:`RUNTIMES`) and
  :func:`load_model`, the one place that picks a runtime for a weights file;
- :mod:`.predictor`: :class:`Predictor`, detections for images of any size (test resize,
  batching, optional NMS and slicing);
- :mod:`.run`: ``focus-detr predict`` on files, folders and videos (:func:`predict_files`),
  with :mod:`.outputs` (what is written where), :mod:`.pipeline` (reading and writing
  threads), :mod:`.video` (PyAV) and :mod:`.slicing` (tiles of large images);
- :mod:`.focus_maps`: where the encoder looked; :mod:`.draw` and :mod:`.draw_focus` make
  pictures of detections and focus maps.

Names load on first use (``import focus_detr.predict`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from focus_detr import lazy_attributes

_EXPORTS = {
    "Capabilities": "focus_detr.structures",
    "Detector": "focus_detr.predict.detector",
    "LoadedModel": "focus_detr.predict.detector",
    "RUNTIMES": "focus_detr.predict.detector",
    "Runtime": "focus_detr.predict.detector",
    "load_model": "focus_detr.predict.detector",
    "load_pytorch_model": "focus_detr.predict.detector",
    "runtime_for": "focus_detr.predict.detector",
    "capabilities_of": "focus_detr.predict.detector",
    "Predictor": "focus_detr.predict.predictor",
    "PredictOptions": "focus_detr.predict.run",
    "predict_files": "focus_detr.predict.run",
    "run_prediction": "focus_detr.predict.run",
    "FocusMap": "focus_detr.predict.focus_maps",
    "compute_focus_maps": "focus_detr.predict.focus_maps",
    "draw_detections": "focus_detr.predict.draw",
    "draw_focus_map": "focus_detr.predict.draw_focus",
}

__all__ = [
    "RUNTIMES",
    "Capabilities",
    "Detector",
    "FocusMap",
    "LoadedModel",
    "PredictOptions",
    "Predictor",
    "Runtime",
    "capabilities_of",
    "compute_focus_maps",
    "draw_detections",
    "draw_focus_map",
    "load_model",
    "load_pytorch_model",
    "predict_files",
    "run_prediction",
    "runtime_for",
]

if TYPE_CHECKING:
    from focus_detr.predict.detector import (
        RUNTIMES,
        Detector,
        LoadedModel,
        Runtime,
        capabilities_of,
        load_model,
        load_pytorch_model,
        runtime_for,
    )
    from focus_detr.predict.draw import draw_detections
    from focus_detr.predict.draw_focus import draw_focus_map
    from focus_detr.predict.focus_maps import FocusMap, compute_focus_maps
    from focus_detr.predict.predictor import Predictor
    from focus_detr.predict.run import PredictOptions, predict_files, run_prediction
    from focus_detr.structures import Capabilities


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
