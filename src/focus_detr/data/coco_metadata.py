"""The 80 COCO detection categories: ids, names, and label <-> id mapping.

COCO numbers its 80 detection categories with ids between 1 and 90 (ten ids are unused). Models
predict contiguous labels 0..79; label ``i`` is category ``COCO_CATEGORY_IDS[i]``, named
``COCO_CLASS_NAMES[i]`` (increasing id order, as in the official annotation files and in
detectron2/detrex).
"""

from __future__ import annotations

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "NUM_COCO_CLASSES",
    "coco_category_id",
    "coco_label",
]

_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in _UNUSED_IDS)
"""The 80 COCO category ids, in increasing order; index = model label."""

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO category names, in the order of ``COCO_CATEGORY_IDS``."""

NUM_COCO_CLASSES = len(COCO_CATEGORY_IDS)

_LABEL_OF_CATEGORY_ID = {category_id: label for label, category_id in enumerate(COCO_CATEGORY_IDS)}


def coco_category_id(label: int) -> int:
    """COCO category id (1..90) of a contiguous model label (0..79).

    Raises:
        ValueError: ``label`` is not in 0..79.
    """
    label = int(label)
    if not 0 <= label < NUM_COCO_CLASSES:
        raise ValueError(f"COCO label must be in 0..{NUM_COCO_CLASSES - 1}, got {label}")
    return COCO_CATEGORY_IDS[label]


def coco_label(category_id: int) -> int:
    """Contiguous model label (0..79) of a COCO category id; inverse of ``coco_category_id``.

    Raises:
        ValueError: ``category_id`` is not one of the 80 COCO detection ids.
    """
    label = _LABEL_OF_CATEGORY_ID.get(int(category_id))
    if label is None:
        raise ValueError(
            f"{category_id} is not a COCO detection category id "
            f"(ids are 1..90 except {sorted(_UNUSED_IDS)})"
        )
    return label
