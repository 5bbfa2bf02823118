"""``predict`` on videos and on batches of images: the same detections as one image at a time."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import focus_detr
from focus_detr.cli import main
from tests.helpers import predict_arguments, read_json_lines

av = pytest.importorskip("av")
pytestmark = pytest.mark.usefixtures("one_thread")

NUM_FRAMES = 8


def _frame(index: int, height: int = 72, width: int = 96) -> np.ndarray:
    """A grey frame with a bright square moving right and a bar moving down."""
    frame = np.full((height, width, 3), 70, dtype=np.uint8)
    frame[20:44, 4 + 6 * index : 28 + 6 * index] = (250, 60, 40)
    frame[2 + 4 * index : 12 + 4 * index, 60:90] = (40, 220, 250)
    return frame


def _write_video(path: Path, codec: str, num_frames: int = NUM_FRAMES) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(10))
        stream.height, stream.width, stream.pix_fmt = 72, 96, "yuv420p"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame(index), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _decoded_frames(path: Path) -> list[torch.Tensor]:
    """The frames as a player decodes them (lossy codecs change the pixels we wrote)."""
    with av.open(str(path)) as container:
        return [
            torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
            for frame in container.decode(video=0)
        ]


def _assert_same_records(mine: list[dict], expected: list[dict]) -> None:
    assert len(mine) == len(expected)
    for a, b in zip(mine, expected):
        assert a["category_name"] == b["category_name"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=2e-3, rtol=1e-4)
        assert abs(a["score"] - b["score"]) < 1e-4


def _records(detections: dict, threshold: float = 0.0) -> list[dict]:
    from focus_detr.data.synthetic import CATEGORY_NAMES

    keep = detections["scores"] >= threshold
    records = []
    for box, score, label in zip(
        detections["boxes"][keep].tolist(),
        detections["scores"][keep].tolist(),
        detections["labels"][keep].tolist(),
    ):
        x1, y1, x2, y2 = box
        records.append(
            {
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
                "category_name": CATEGORY_NAMES[label],
            }
        )
    return records


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    broken = folder / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {
        "mp4": _write_video(folder / "moving.mp4", "mpeg4"),
        "mkv": _write_video(folder / "moving.mkv", "libx264"),
        "broken": broken,
    }


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_video_frames_get_the_detections_of_the_frames_as_images(
    videos, tiny_checkpoint, tmp_path, kind
) -> None:
    out = tmp_path / "out"
    assert main(predict_arguments([videos[kind]], out, tiny_checkpoint, "--batch-size", "3")) == 0
    lines = read_json_lines(out / "videos" / "moving.jsonl")
    assert [line["frame"] for line in lines] == list(range(NUM_FRAMES))
    np.testing.assert_allclose([line["time"] for line in lines], np.arange(NUM_FRAMES) / 10)
    model, _ = focus_detr.load_model(tiny_checkpoint)
    expected = focus_detr.Predictor(model)(_decoded_frames(videos[kind]))
    for line, detections in zip(lines, expected):
        _assert_same_records(line["detections"], _records(detections))
    annotated = _decoded_frames(out / "annotated" / "moving.mp4")
    assert len(annotated) == NUM_FRAMES and tuple(annotated[0].shape) == (3, 72, 96)


def test_video_stride_takes_every_kth_frame(videos, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(predict_arguments([videos["mp4"]], out, tiny_checkpoint, "--vid-stride", "3")) == 0
    lines = read_json_lines(out / "videos" / "moving.jsonl")
    assert [line["frame"] for line in lines] == [0, 3, 6]
    np.testing.assert_allclose([line["time"] for line in lines], [0.0, 0.3, 0.6])
    assert len(_decoded_frames(out / "annotated" / "moving.mp4")) == 3


def test_a_corrupt_video_is_reported_and_the_rest_processed(
    videos, synthetic, tiny_checkpoint, tmp_path, capsys
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("broken", "mp4"):
        shutil.copy(videos[name], folder / videos[name].name)
    image = sorted(synthetic.val_images.glob("*.png"))[0]
    shutil.copy(image, folder / "still.png")
    out = tmp_path / "out"
    assert main(predict_arguments([folder], out, tiny_checkpoint)) == 1
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "1 files could not be read" in captured.err
    assert "1 images, 1 videos (8 frames)" in captured.out
    assert len(read_json_lines(out / "videos" / "moving.jsonl")) == NUM_FRAMES
    assert (out / "annotated" / "still.png").is_file()


def test_batched_predict_equals_batch_size_one(synthetic, tiny_checkpoint, tmp_path) -> None:
    runs = {}
    for batch_size in ("1", "4"):
        out = tmp_path / f"batch{batch_size}"
        arguments = predict_arguments(
            [synthetic.val_images], out, tiny_checkpoint, "--batch-size", batch_size
        )
        assert main(arguments) == 0
        runs[batch_size] = read_json_lines(out / "predictions.jsonl")
    assert [line["file_name"] for line in runs["4"]] == [line["file_name"] for line in runs["1"]]
    assert len(runs["1"]) == 6
    for one, four in zip(runs["1"], runs["4"]):
        _assert_same_records(four["detections"], one["detections"])


def test_nms_and_slicing_options_reach_the_predictor(synthetic, tiny_checkpoint, tmp_path):
    image = sorted(synthetic.val_images.glob("*.png"))[0]
    counts = {}
    for name, extra in {
        "plain": (),
        "nms": ("--nms", "0.3"),
        "sliced": ("--slice", "48x48", "--slice-overlap", "0.25", "--batch-size", "4"),
    }.items():
        out = tmp_path / name
        assert main(predict_arguments([image], out, tiny_checkpoint, *extra)) == 0
        (line,) = read_json_lines(out / "predictions.jsonl")
        counts[name] = len(line["detections"])
        for record in line["detections"]:
            x, y, w, h = record["bbox"]
            assert x >= 0 and y >= 0 and x + w <= line["width"] + 1e-3
            assert y + h <= line["height"] + 1e-3
    model, _ = focus_detr.load_model(tiny_checkpoint)
    assert counts["plain"] == model.config.num_detections  # threshold 0: the model's output
    assert counts["nms"] < counts["plain"]
    assert counts["sliced"] > counts["nms"]  # tiles add detections the whole image lacks


@pytest.mark.parametrize(("batch_size", "threads_in_forward"), [(1, 2), (2, 3)])
def test_one_image_at_a_time_leaves_a_core_to_the_reading_threads(
    synthetic, tiny_checkpoint, tmp_path, monkeypatch, batch_size, threads_in_forward
) -> None:
    """On a 3-core CPU with PyTorch on every core, batch size 1 runs the model on 2 threads
    while the pipeline's threads read and write; the setting is restored afterwards."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    torch.set_num_threads(3)  # the one_thread fixture restores the caller's setting
    model, categories = focus_detr.load_model(tiny_checkpoint, device="cpu")
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.get_num_threads()))
    predictor = focus_detr.Predictor(model, batch_size=batch_size)
    focus_detr.predict_files(
        predictor, categories, [synthetic.val_images], tmp_path / "out", progress=False
    )
    assert seen and set(seen) == {threads_in_forward}
    assert torch.get_num_threads() == 3
