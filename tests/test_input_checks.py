"""Issue 9, item 6: the Python API refuses pixels it would silently misread."""

from __future__ import annotations

import warnings

import pytest
import torch

import focus_detr
from focus_detr.structures import ImageBatch
from tests.helpers import random_image, randomize_, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> focus_detr.FocusDETR:
    return randomize_(focus_detr.build_model(tiny_config())).eval()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("as_batch", [False, True])
def test_non_finite_pixels_are_an_error(model, bad_value, as_batch) -> None:
    image = random_image(40, 50).float() / 255
    image[1, 7, 9] = bad_value
    images = ImageBatch.from_images([image]) if as_batch else [random_image(30, 30), image]
    index = 0 if as_batch else 1
    with pytest.raises(ValueError, match=rf"image {index} has NaN or infinite"):
        model(images)


def test_float_image_on_the_0_255_scale_warns(model) -> None:
    image = random_image(40, 50)
    with pytest.warns(UserWarning, match=r"image 0 .* \[0, 1\].*255"), torch.no_grad():
        model([image.float()])


def test_float_image_in_0_1_and_uint8_images_do_not_warn(model) -> None:
    image = random_image(40, 50)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        model([image.float() / 255])
        model([image])
        model(ImageBatch.from_images([image.float() / 255]))


def test_predictor_explains_how_to_convert_a_float_image(model) -> None:
    predictor = focus_detr.Predictor(model, min_size=32, max_size=64)
    with pytest.raises(ValueError, match=r"uint8 .*\* 255"):
        predictor([random_image(40, 50).float() / 255])
