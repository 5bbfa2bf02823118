"""Tests for focus_detr.predict.draw (drawing, saving) and focus_detr.data.coco_metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focus_detr.data.coco_metadata import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    NUM_COCO_CLASSES,
    coco_category_id,
    coco_label,
)
from focus_detr.io import read_image
from focus_detr.predict.draw import class_color, draw_detections, save_image

GREY = 128


def _grey_image(height: int = 200, width: int = 300) -> torch.Tensor:
    return torch.full((3, height, width), GREY, dtype=torch.uint8)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def _one_box(box: list[float], label: int = 3, score: float = 0.87):
    return torch.tensor([box]), torch.tensor([label]), torch.tensor([score])


def test_box_outline_drawn_in_class_colour_and_interior_untouched() -> None:
    image = _grey_image()
    before = image.clone()
    drawn = draw_detections(image, *_one_box([100, 80, 200, 160]), class_names=COCO_CLASS_NAMES)
    assert isinstance(drawn, Image.Image) and drawn.mode == "RGB"
    assert drawn.size == (300, 200)
    assert torch.equal(image, before)  # input not modified
    pixels = _pixels(drawn)
    color = list(class_color(3))
    assert pixels[120, 100].tolist() == color  # left side
    assert pixels[120, 200].tolist() == color  # right side
    assert pixels[160, 150].tolist() == color  # bottom side
    assert np.all(pixels[100:150, 110:190] == GREY)  # interior
    assert np.all(pixels[:, :90] == GREY)  # left of the box and of its label
    label_area = pixels[80 - 14 : 80, 100:200]  # the label sits above the box
    assert (label_area != GREY).any(axis=2).mean() > 0.3


def test_label_text_shows_name_and_score() -> None:
    image = _grey_image()
    box = [50, 80, 250, 160]
    short = draw_detections(image, *_one_box(box, label=0), class_names=["a"])
    long = draw_detections(image, *_one_box(box, label=0), class_names=["a long name"])
    changed_short = (_pixels(short) != GREY).any(axis=2)[:80].sum()
    changed_long = (_pixels(long) != GREY).any(axis=2)[:80].sum()
    assert changed_long > changed_short > 0


def test_no_boxes_returns_unchanged_copy() -> None:
    image = _grey_image()
    drawn = draw_detections(
        image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    )
    np.testing.assert_array_equal(_pixels(drawn), image.permute(1, 2, 0).numpy())


def test_threshold_skips_low_scores() -> None:
    boxes = torch.tensor([[10.0, 50, 60, 100], [150, 50, 250, 100]])
    drawn = draw_detections(
        _grey_image(), boxes, torch.tensor([0, 1]), torch.tensor([0.2, 0.9]), threshold=0.5
    )
    pixels = _pixels(drawn)
    assert np.all(pixels[:, :140] == GREY)
    assert pixels[75, 150].tolist() == list(class_color(1))


def test_boxes_partly_outside_are_clipped_and_labels_stay_inside() -> None:
    boxes = torch.tensor([[-50.0, -40, 120, 90], [250, 150, 400, 260], [290, 0, 1e9, 1e9]])
    labels = torch.tensor([0, 1, 2])
    drawn = draw_detections(_grey_image(), boxes, labels, torch.tensor([0.5, 0.6, 0.7]))
    pixels = _pixels(drawn)
    assert drawn.size == (300, 200)
    assert pixels[60, 0].tolist() == list(class_color(0))  # left side clipped to column 0
    assert pixels[199, 270].tolist() == list(class_color(1))  # bottom side on the last row
    # The label of the box at the top edge goes inside the box, not above the image.
    assert (pixels[0:8, 0:40] != GREY).any(axis=2).mean() > 0.3
    # The label of the box at the right edge is shifted left to fit in the image.
    assert (pixels[0:8, 200:290] != GREY).any()


def test_invalid_and_outside_boxes_are_skipped() -> None:
    boxes = torch.tensor(
        [
            [float("nan"), 0, 10, 10],
            [0, 0, float("inf"), 10],
            [50, 50, 20, 80],  # x2 < x1
            [400, 10, 500, 50],  # right of the image
            [-80, -80, -10, -10],  # above-left of the image
        ]
    )
    drawn = draw_detections(_grey_image(), boxes, torch.zeros(5, dtype=torch.long), torch.ones(5))
    assert np.all(_pixels(drawn) == GREY)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (12, 9), (3000, 4000)])
def test_any_image_size(height: int, width: int) -> None:
    box = [0.1 * width, 0.2 * height, 0.8 * width, 0.9 * height]
    drawn = draw_detections(
        _grey_image(height, width), *_one_box(box, label=79), class_names=COCO_CLASS_NAMES
    )
    assert drawn.size == (width, height)
    assert (_pixels(drawn) != GREY).any()


def test_line_width_and_font_grow_with_image() -> None:
    small = _pixels(draw_detections(_grey_image(200, 300), *_one_box([60, 100, 240, 190])))
    large = _pixels(draw_detections(_grey_image(2000, 3000), *_one_box([600, 1000, 2400, 1900])))
    color = list(class_color(3))
    small_width = int((small[150, 55:100] == color).all(axis=1).sum())
    large_width = int((large[1500, 550:1000] == color).all(axis=1).sum())
    assert small_width >= 1 and large_width >= 5 * small_width
    small_label = (small[:100] != GREY).any(axis=2).sum(axis=0).max()
    large_label = (large[:1000] != GREY).any(axis=2).sum(axis=0).max()
    assert large_label >= 3 * small_label  # label height scales too (small: minimum font)


def test_pil_input_and_unnamed_labels() -> None:
    image = Image.new("L", (120, 80), GREY)
    drawn = draw_detections(image, *_one_box([10, 30, 60, 70], label=500), class_names=["x"])
    assert image.mode == "L" and np.all(np.asarray(image) == GREY)
    assert drawn.mode == "RGB" and (_pixels(drawn) != GREY).any()
    assert draw_detections(image, *_one_box([10, 30, 60, 70]), class_names=None).size == (120, 80)


def test_bad_inputs_raise_value_error() -> None:
    boxes, labels, scores = _one_box([10, 10, 50, 50])
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(torch.zeros(3, 20, 20), boxes, labels, scores)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        draw_detections(torch.zeros(20, 20, 3, dtype=torch.uint8), boxes, labels, scores)
    with pytest.raises(ValueError, match="num_boxes, 4"):
        draw_detections(_grey_image(), torch.zeros(4), labels, scores)
    with pytest.raises(ValueError, match="must be \\[1\\]"):
        draw_detections(_grey_image(), boxes, torch.tensor([1, 2]), scores)
    with pytest.raises(ValueError, match="integers"):
        draw_detections(_grey_image(), boxes, torch.tensor([1.5]), scores)


def test_class_colours_are_distinct() -> None:
    colors = {class_color(label) for label in range(NUM_COCO_CLASSES)}
    assert len(colors) == NUM_COCO_CLASSES


def test_save_image_round_trip(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    path = tmp_path / "out" / "drawn.png"
    save_image(image, path)
    assert torch.equal(read_image(path), image)
    drawn = draw_detections(image, *_one_box([2, 2, 20, 15]))
    save_image(drawn, tmp_path / "drawn.jpg")
    assert read_image(tmp_path / "drawn.jpg").shape == (3, 17, 23)
    save_image(Image.new("RGBA", (4, 4)), tmp_path / "alpha.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.jpg", "drawn.jpg", "out"]
    with pytest.raises(ValueError, match="suffix"):
        save_image(image, tmp_path / "drawn.unknown")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draw_from_cuda_tensors() -> None:
    device = torch.device("cuda")
    boxes, labels, scores = (t.to(device) for t in _one_box([10, 10, 50, 50]))
    drawn = draw_detections(_grey_image().to(device), boxes, labels, scores)
    assert drawn.size == (300, 200)


def test_coco_ids_and_names() -> None:
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASS_NAMES) == NUM_COCO_CLASSES == 80
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert len(set(COCO_CLASS_NAMES)) == 80
    named = dict(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES))
    assert named[1] == "person" and named[18] == "dog" and named[44] == "bottle"
    assert named[67] == "dining table" and named[72] == "tv" and named[90] == "toothbrush"


def test_coco_label_mapping_round_trips() -> None:
    for label in range(80):
        assert coco_label(coco_category_id(label)) == label
    assert coco_category_id(0) == 1 and coco_category_id(79) == 90
    assert coco_label(13) == 11 and coco_label(torch.tensor(90)) == 79
    for bad_label in (-1, 80):
        with pytest.raises(ValueError, match=r"0\.\.79"):
            coco_category_id(bad_label)
    for bad_id in (0, 12, 83, 91):
        with pytest.raises(ValueError, match="not a COCO"):
            coco_label(bad_id)
