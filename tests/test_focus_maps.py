"""Focus maps: the encoder's choices per image, as arrays and as pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import focus_detr
from focus_detr.cli import main
from focus_detr.predict.draw_focus import draw_focus_map
from focus_detr.predict.focus_maps import compute_focus_maps
from tests.helpers import predict_arguments, random_image, randomize_, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(70, 90), (40, 120), (96, 64)]


@pytest.fixture(scope="module")
def model() -> focus_detr.FocusDETR:
    config = tiny_config(test_min_size=64, test_max_size=128, keep_ratio=0.4, cascade=(1.0, 0.5))
    return randomize_(focus_detr.build_model(config)).eval()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    return [random_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


def test_a_batch_of_different_sizes_gives_each_image_its_own_map(model, images) -> None:
    batched = compute_focus_maps(model, images)
    for image, focus in zip(images, batched):
        alone = compute_focus_maps(model, [image])[0]
        assert focus.image_size == tuple(image.shape[1:]) and focus.input_size == alone.input_size
        for level, stride in enumerate(focus.strides):
            expected = tuple(math.ceil(side / stride) for side in focus.input_size)
            assert focus.foreground[level].shape == expected
            np.testing.assert_allclose(focus.foreground[level], alone.foreground[level], atol=1e-4)
        for layer in range(len(focus.updated)):
            for level in range(len(focus.strides)):
                assert np.array_equal(focus.updated[layer][level], alone.updated[layer][level])
                assert np.array_equal(
                    focus.dual_attention[layer][level], alone.dual_attention[layer][level]
                )


def test_updated_tokens_follow_the_cascade_and_the_scores(model, images) -> None:
    focus = compute_focus_maps(model, images[:1])[0]
    kept = [sum(int(mask.sum()) for mask in layer) for layer in focus.updated]
    assert kept[0] == int(focus.num_tokens * 0.4) + 1  # keep ratio 0.4 of the tokens
    assert kept[1] == int(0.5 * kept[0])
    for level in range(len(focus.strides)):
        # nested: the last layer updates a subset of the first; dual attention a subset of both
        assert not (focus.updated[1][level] & ~focus.updated[0][level]).any()
        assert not (focus.dual_attention[0][level] & ~focus.updated[0][level]).any()
    # the first layer takes the best foreground scores of all levels together
    scores = np.concatenate([level.ravel() for level in focus.foreground])
    chosen = np.concatenate([level.ravel() for level in focus.updated[0]])
    assert scores[chosen].min() >= scores[~chosen].max()
    merged = focus.merged_foreground()
    assert merged.shape == focus.foreground[0].shape
    assert merged.max() == pytest.approx(max(level.max() for level in focus.foreground))


def test_picture_shows_the_panels_and_refuses_the_wrong_image(model, images) -> None:
    focus = compute_focus_maps(model, images[:1])[0]
    detections = {
        "boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    picture = draw_focus_map(images[0], focus, detections, ["a", "b"])
    assert picture.mode == "RGB" and picture.width > 3 * 320 and picture.height > 2 * 240
    pixels = np.asarray(picture)
    assert (pixels != 255).any(axis=2).mean() > 0.3  # mostly panels, not an empty sheet
    with pytest.raises(ValueError, match="focus map"):
        draw_focus_map(images[1], focus)


def test_predict_writes_a_focus_map_per_image_in_batches(synthetic, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    extra = ("--focus-maps", "--batch-size", "4")
    assert main(predict_arguments([synthetic.val_images], out, tiny_checkpoint, *extra)) == 0
    written = sorted(path.name for path in (out / "focus_maps").iterdir())
    assert written == sorted(path.name for path in synthetic.val_images.glob("*.png"))
    for path in (out / "focus_maps").iterdir():
        with Image.open(path) as picture:
            assert picture.width > 3 * 320
