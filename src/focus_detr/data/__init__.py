"""Data pipeline: COCO, YOLO and Pascal VOC datasets (all read into one
:class:`CocoDetection`), augmentations, batching and the built-in synthetic datasets."""

from focus_detr.data.coco import CocoDetection, load_coco_json
from focus_detr.data.collate import (
    build_step_dataloader,
    collate_detection,
)
from focus_detr.data.discovery import (
    SplitFiles,
    detect_format,
    discover_splits,
    load_dataset,
    load_split,
)
from focus_detr.data.image_check import BadImage
from focus_detr.data.synthetic import (
    CATEGORY_NAMES as SYNTHETIC_CATEGORY_NAMES,
)
from focus_detr.data.synthetic import (
    SyntheticPaths,
    SyntheticYoloPaths,
    ensure_synthetic_dataset,
    ensure_synthetic_yolo,
    generate_synthetic_coco,
    generate_synthetic_yolo,
)
from focus_detr.data.transforms import (
    ClipAndRemoveEmptyBoxes,
    RandomCropAbsoluteRange,
    ResizeShortestEdge,
    build_test_transforms,
    build_train_transforms,
    clip_and_remove_empty_boxes,
    resize_image,
    resize_shortest_edge_size,
)

__all__ = [
    "SYNTHETIC_CATEGORY_NAMES",
    "BadImage",
    "ClipAndRemoveEmptyBoxes",
    "CocoDetection",
    "RandomCropAbsoluteRange",
    "ResizeShortestEdge",
    "SplitFiles",
    "SyntheticPaths",
    "SyntheticYoloPaths",
    "build_step_dataloader",
    "build_test_transforms",
    "build_train_transforms",
    "clip_and_remove_empty_boxes",
    "collate_detection",
    "detect_format",
    "discover_splits",
    "ensure_synthetic_dataset",
    "ensure_synthetic_yolo",
    "generate_synthetic_coco",
    "generate_synthetic_yolo",
    "load_coco_json",
    "load_dataset",
    "load_split",
    "resize_image",
    "resize_shortest_edge_size",
]
