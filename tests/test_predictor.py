"""``Predictor``: real batching, optional NMS, sliced inference mapped back to the image."""

from __future__ import annotations

import itertools

import pytest
import torch

import focus_detr
from focus_detr.predict.slicing import Slicing, Window
from tests.helpers import random_image, randomize_, tiny_config

WHITE = 255
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> focus_detr.FocusDETR:
    return randomize_(focus_detr.build_model(tiny_config(test_min_size=48, test_max_size=80)))


class WhiteSquareDetector:
    """A stand-in detector: reports the box of the bright pixels of each view, if any.

    Its score grows with the number of white pixels, so a zoomed-in view of an object scores
    higher than the whole image shrunk; every call is recorded.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.config = tiny_config(test_min_size=min_size, test_max_size=max_size)
        self.device = torch.device("cpu")
        self.view_sizes: list[tuple[int, int]] = []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            self.view_sizes.append((int(image.shape[1]), int(image.shape[2])))
            ys, xs = torch.nonzero((image > 150).all(dim=0), as_tuple=True)
            if len(xs) == 0:
                results.append(_detections([], [], []))
                continue
            box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            results.append(_detections([box], [min(1.0, len(xs) / 1000)], [3]))
        return results


def _detections(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _images() -> list[torch.Tensor]:
    sizes = [(70, 90), (40, 120), (96, 64), (50, 50), (120, 100)]
    return [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    """Same detections up to float32 round-off (batching is exact up to it)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(x["scores"], y["scores"], atol=1e-4, rtol=0)


def test_batched_prediction_equals_one_image_at_a_time(model) -> None:
    images = _images()
    one_by_one = focus_detr.Predictor(model, batch_size=1)(images)
    _assert_same(focus_detr.Predictor(model, batch_size=3)(images), one_by_one)
    _assert_same(focus_detr.Predictor(model, batch_size=8)(images), one_by_one)
    with torch.no_grad():
        direct = model([focus_detr.Predictor(model)._resize(images[0])])[0]
    assert len(one_by_one[0]["scores"]) == len(direct["scores"])  # no NMS unless asked


def test_sliced_prediction_does_not_depend_on_the_batch(model) -> None:
    images = _images()[:3]
    options = dict(slice_size=(40, 48), slice_overlap=0.25)
    one_by_one = focus_detr.Predictor(model, batch_size=1, **options)(images)
    _assert_same(focus_detr.Predictor(model, batch_size=5, **options)(images), one_by_one)


def test_views_are_batched_across_images() -> None:
    detector = WhiteSquareDetector(32, 32)
    predictor = focus_detr.Predictor(detector, batch_size=4, slice_size=32, slice_overlap=0.5)
    images = [random_image(64, 64, seed=1), random_image(48, 48, seed=2)]
    predictor(images)
    # 1 + 9 views, then 1 + 4 views: 15 views in batches of 4 (calls are not visible, views are)
    assert len(detector.view_sizes) == 15


def test_nms_removes_a_duplicate_of_the_same_class_only() -> None:
    class Duplicates(WhiteSquareDetector):
        def __call__(self, images):
            boxes = [[10, 10, 30, 30], [11, 10, 31, 30], [10, 10, 30, 30], [40, 40, 50, 50]]
            return [_detections(boxes, [0.9, 0.8, 0.7, 0.6], [1, 1, 2, 1]) for _ in images]

    image = random_image(64, 64)
    plain = focus_detr.Predictor(Duplicates(64, 64))([image])[0]
    assert len(plain["scores"]) == 4  # off by default: the model's own output
    kept = focus_detr.Predictor(Duplicates(64, 64), nms_iou=0.5)([image])[0]
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert kept["labels"].tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="nms_iou"):
        focus_detr.Predictor(Duplicates(64, 64), nms_iou=1.5)


def test_slicing_maps_a_tile_box_back_to_the_image_exactly() -> None:
    # tiles of 64 are the test size: they reach the detector unresized, so boxes are exact
    detector = WhiteSquareDetector(64, 64)
    image = torch.full((3, 256, 320), 40, dtype=torch.uint8)
    image[:, 150:162, 100:113] = WHITE  # x 100..113, y 150..162
    predictor = focus_detr.Predictor(detector, slice_size=64, slice_overlap=0.25)
    found = predictor([image])[0]
    assert found["boxes"].tolist() == [[100.0, 150.0, 113.0, 162.0]]
    assert found["labels"].tolist() == [3]
    assert (64, 64) in detector.view_sizes and (51, 64) in detector.view_sizes  # tile, whole
    whole_only = focus_detr.Predictor(detector)([image])[0]
    assert whole_only["boxes"].tolist() != [[100.0, 150.0, 113.0, 162.0]]  # blurred when shrunk


def test_a_fragment_cut_by_a_tile_edge_is_dropped() -> None:
    detector = WhiteSquareDetector(64, 64)
    image = torch.full((3, 128, 128), 40, dtype=torch.uint8)
    image[:, 20:40, 40:60] = WHITE  # cut by the left edge of the tile at x = 48
    predictor = focus_detr.Predictor(detector, slice_size=64, slice_overlap=0.25)
    found = predictor([image])[0]
    assert found["boxes"].tolist() == [[40.0, 20.0, 60.0, 40.0]]


def test_tiles_cover_the_image_with_the_overlap() -> None:
    slicing = Slicing(tile_height=100, tile_width=64, overlap=0.25)
    windows = slicing.windows(250, 300)
    assert windows[0] == Window(0, 0, 300, 250)
    covered = torch.zeros(250, 300, dtype=torch.bool)
    for window in windows[1:]:
        assert (window.height, window.width) == (100, 64)
        covered[window.top : window.bottom, window.left : window.right] = True
    assert bool(covered.all())
    lefts = sorted({w.left for w in windows[1:]})
    assert lefts[-1] == 300 - 64  # the last tile ends on the border
    assert all(b - a <= 64 * 0.75 for a, b in itertools.pairwise(lefts))
    assert Slicing(400, 400).windows(250, 300) == [Window(0, 0, 300, 250)]  # one tile = image
    with pytest.raises(ValueError, match="overlap"):
        Slicing(64, 64, overlap=1.0)
