"""Detections as ``supervision.Detections`` (``pip install "focus-detr[supervision]"``).

`supervision <https://supervision.roboflow.com>`_ draws, tracks, counts and filters detections.
It pulls in OpenCV and more, so it is an optional extra, imported only when
:func:`to_supervision` is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    import supervision

__all__ = ["to_supervision"]


def to_supervision(
    detections: Mapping[str, Tensor], class_names: Sequence[str] | None = None
) -> supervision.Detections:
    """One image's detections (``boxes`` xyxy pixels, ``scores``, ``labels``) as
    ``supervision.Detections``.

    ``xyxy``, ``confidence`` and ``class_id`` (our 0-based labels) are filled; with
    ``class_names`` (e.g. ``Categories.names``), ``data["class_name"]`` too, which
    supervision's label annotators show.
    """
    try:
        import supervision
    except ImportError as error:
        raise ImportError(
            'to_supervision needs supervision: pip install "focus-detr[supervision]"'
        ) from error
    labels = detections["labels"].detach().cpu().numpy().astype(np.int64)
    data: dict[str, Any] = {}
    if class_names is not None:
        names = [
            class_names[label] if 0 <= label < len(class_names) else str(label) for label in labels
        ]
        data["class_name"] = np.array(names, dtype=str)
    return supervision.Detections(
        xyxy=detections["boxes"].detach().cpu().float().numpy().reshape(-1, 4),
        confidence=detections["scores"].detach().cpu().float().numpy(),
        class_id=labels,
        data=data,
    )
