"""Data pipeline: COCO-format datasets, augmentations, batching and the synthetic dataset."""

from focus_detr.data.coco import CocoDetection, load_coco_json
from focus_detr.data.collate import (
    build_step_dataloader,
    collate_detection,
)
from focus_detr.data.synthetic import (
    CATEGORY_NAMES as SYNTHETIC_CATEGORY_NAMES,
)
from focus_detr.data.synthetic import (
    SyntheticPaths,
    ensure_synthetic_dataset,
    generate_synthetic_coco,
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
    "ClipAndRemoveEmptyBoxes",
    "CocoDetection",
    "RandomCropAbsoluteRange",
    "ResizeShortestEdge",
    "SyntheticPaths",
    "build_step_dataloader",
    "build_test_transforms",
    "build_train_transforms",
    "clip_and_remove_empty_boxes",
    "collate_detection",
    "ensure_synthetic_dataset",
    "generate_synthetic_coco",
    "load_coco_json",
    "resize_image",
    "resize_shortest_edge_size",
]
