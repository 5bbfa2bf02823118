"""``focus-detr predict``: detections for images and videos, written as they come.

Threading (:mod:`focus_detr.predict.pipeline`): worker threads read and resize images (a video is
decoded and resized by one thread of its own) while the model runs batches in the calling
thread; a writer thread draws and saves the pictures and encodes the annotated videos. Every
result is written to a JSON-lines file the moment it is known, so an interruption (Ctrl-C, a
crash) keeps everything done so far; ``predictions.json`` is written at the end, and also when
the run is interrupted. The files written are described in :mod:`focus_detr.predict.outputs`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from focus_detr.data.categories import Categories
from focus_detr.errors import UsageError
from focus_detr.io import ImageReadError, atomic_write_bytes, read_image
from focus_detr.predict.detector import capabilities_of
from focus_detr.predict.draw import draw_detections, save_image
from focus_detr.predict.draw_focus import draw_focus_map
from focus_detr.predict.focus_maps import FocusMap, focus_maps_of_inputs
from focus_detr.predict.outputs import (
    JsonLines,
    PredictionPlan,
    above_threshold,
    detection_records,
    plan_prediction,
)
from focus_detr.predict.pipeline import BackgroundWriter, background_iter, prefetch
from focus_detr.predict.predictor import Predictor, PreparedImage
from focus_detr.predict.video import (
    VideoFrame,
    VideoReadError,
    VideoWriter,
    pyav,
    read_frames,
    video_info,
)

__all__ = ["PredictOptions", "PredictionRun", "predict_files", "run_prediction"]


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`run_prediction` runs.

    Attributes:
        threshold: detections scoring at least this are kept.
        video_stride: process every ``video_stride``-th frame of videos.
        focus_maps: also draw where the encoder looked (one more forward per image).
        progress: show progress bars.
        workers: threads reading images (0: read in the calling thread).
    """

    threshold: float = 0.3
    video_stride: int = 1
    focus_maps: bool = False
    progress: bool = True
    workers: int = 2


@dataclass
class PredictionRun:
    """What :func:`run_prediction` did."""

    num_images: int = 0
    num_videos: int = 0
    num_frames: int = 0
    num_detections: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    results_path: Path | None = None
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        """Images and video frames done per second of the run (reading, the model, writing)."""
        done = self.num_images + self.num_frames
        return done / self.seconds if self.seconds > 0 else 0.0


def predict_files(
    predictor: Predictor,
    categories: Categories,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    threshold: float = 0.3,
    progress: bool = True,
    video_stride: int = 1,
    focus_maps: bool = False,
    workers: int = 2,
) -> PredictionRun:
    """Detect objects in every image and video of ``inputs`` (files or folders).

    Writes under ``out_dir`` (see :mod:`focus_detr.predict.outputs`): ``predictions.jsonl``
    (one line per image, as it is done), ``predictions.json`` (COCO results with
    ``file_name``, ``bbox`` [x, y, w, h], ``score``, ``category_id``, ``category_name``), an
    annotated copy of each image and video, per-frame detections of each video, and focus maps
    when asked. Detections scoring at least ``threshold`` are kept. A file that cannot be read
    is reported and skipped; the others are processed. The output folder is checked before
    any work (:func:`~focus_detr.predict.outputs.plan_prediction`).
    """
    plan = plan_prediction(inputs, out_dir, focus_maps=focus_maps)
    options = PredictOptions(threshold, video_stride, focus_maps, progress, workers)
    return run_prediction(predictor, categories, plan, options)


def run_prediction(
    predictor: Predictor, categories: Categories, plan: PredictionPlan, options: PredictOptions
) -> PredictionRun:
    """Process a planned run: the images, then the videos."""
    if options.video_stride < 1:
        raise UsageError(f"the video stride must be >= 1, got {options.video_stride}")
    if plan.videos:
        try:
            pyav()
        except ImportError as error:
            raise UsageError(f"{len(plan.videos)} video(s) to read, but {error}") from None
    if options.focus_maps and not capabilities_of(predictor.model).raw_outputs:
        raise UsageError("focus maps need the PyTorch model (its raw outputs)")
    run = PredictionRun(results_path=plan.results_path)
    started = time.perf_counter()
    with _leave_a_core_to_the_pipeline(predictor):
        _predict_images(predictor, categories, plan, options, run)
        for video in plan.videos:
            _predict_video(predictor, categories, video, plan, options, run)
    run.seconds = time.perf_counter() - started
    return run


@contextlib.contextmanager
def _leave_a_core_to_the_pipeline(predictor: Predictor) -> Iterator[None]:
    """One PyTorch thread fewer while the reading and writing threads run, when PyTorch would
    otherwise take every core for one image at a time on the CPU.

    Its OpenMP threads wait for each other at every parallel region; a pipeline thread that
    takes one of their cores stalls them all. On 2 cores, batch size 1: 11 images/s and 13
    video frames/s with one PyTorch thread, 8 and 7.5 with two (docs/predict.md). Larger
    batches spend most of their time in the model and keep every thread.
    """
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = predictor.model
    cpu = capabilities_of(model).torch_threads and model.device.type == "cpu"
    if not cpu or predictor.batch_size > 1 or cores is None or threads < cores or cores < 2:
        yield
        return
    torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Image:
    """An image read and prepared for the model."""

    path: Path
    pixels: Tensor
    prepared: PreparedImage


@dataclass(frozen=True)
class _Unreadable:
    path: Path
    error: str


def _load(predictor: Predictor, path: Path) -> _Image | _Unreadable:
    try:
        pixels = read_image(path)
    except ImageReadError as error:
        return _Unreadable(path, str(error))
    return _Image(path, pixels, predictor.prepare(pixels))


def _predict_images(
    predictor: Predictor,
    categories: Categories,
    plan: PredictionPlan,
    options: PredictOptions,
    run: PredictionRun,
) -> None:
    results: list[dict[str, object]] = []
    bar = tqdm(total=len(plan.images), desc="images", unit="image", disable=not options.progress)
    try:
        with JsonLines(plan.lines_path) as lines, BackgroundWriter() as writer, bar:
            ahead = predictor.batch_size + 2 * options.workers
            loaded = prefetch(
                plan.images, partial(_load, predictor), workers=options.workers, ahead=ahead
            )
            readable = _report_unreadable(loaded, run, lines, bar)
            detected = predictor.predict_prepared(readable)
            for image, found, focus in _with_focus_maps(detected, predictor, options.focus_maps):
                kept = above_threshold(found, options.threshold)
                records = detection_records(kept, categories)
                lines.write(_image_line(image, records))
                results.extend({"file_name": str(image.path), **record} for record in records)
                writer.submit(partial(_save_pictures, image, kept, focus, plan, categories))
                run.num_images += 1
                run.num_detections += len(records)
                bar.update()
    finally:  # also on Ctrl-C: the COCO file holds every image done
        atomic_write_bytes(plan.results_path, json.dumps(results, indent=1).encode())


def _image_line(image: _Image, records: list[dict[str, object]]) -> dict[str, object]:
    height, width = image.prepared.image_size
    return {"file_name": str(image.path), "height": height, "width": width, "detections": records}


def _report_unreadable(
    loaded: Iterable[_Image | _Unreadable], run: PredictionRun, lines: JsonLines, bar: tqdm
) -> Iterator[tuple[_Image, PreparedImage]]:
    """The images that could be read (with their prepared views); the others are reported."""
    for item in loaded:
        if isinstance(item, _Image):
            yield item, item.prepared
            continue
        _report_failure(run, item.path, item.error)
        lines.write({"file_name": str(item.path), "error": item.error})
        bar.update()


def _report_failure(run: PredictionRun, path: Path, message: str) -> None:
    run.failed[str(path)] = message
    tqdm.write(f"error: skipped {path}: {message}", file=sys.stderr)


def _with_focus_maps(
    detected: Iterable[tuple[_Image, dict[str, Tensor]]], predictor: Predictor, enabled: bool
) -> Iterator[tuple[_Image, dict[str, Tensor], FocusMap | None]]:
    """Pass detections through, with the focus maps of the images when ``enabled`` (one more
    raw forward per batch of ``predictor.batch_size`` images)."""
    if not enabled:
        yield from ((item, found, None) for item, found in detected)
        return
    batch: list[tuple[_Image, dict[str, Tensor]]] = []
    for pair in detected:
        batch.append(pair)
        if len(batch) == predictor.batch_size:
            yield from _focus_maps_of_batch(batch, predictor)
            batch = []
    yield from _focus_maps_of_batch(batch, predictor)


def _focus_maps_of_batch(
    batch: list[tuple[_Image, dict[str, Tensor]]], predictor: Predictor
) -> Iterator[tuple[_Image, dict[str, Tensor], FocusMap | None]]:
    if not batch:
        return
    prepared = [image.prepared for image, _ in batch]
    maps = focus_maps_of_inputs(
        predictor.model, [p.views[0] for p in prepared], [p.image_size for p in prepared]
    )
    for (item, found), focus in zip(batch, maps):
        yield item, found, focus


def _save_pictures(
    image: _Image,
    detections: dict[str, Tensor],
    focus: FocusMap | None,
    plan: PredictionPlan,
    categories: Categories,
) -> None:
    save_image(_drawn(image.pixels, detections, categories), plan.annotated_path(image.path))
    if focus is not None:
        picture = draw_focus_map(image.pixels, focus, detections, categories.names)
        save_image(picture, plan.focus_map_path(image.path))


def _drawn(pixels: Tensor, detections: dict[str, Tensor], categories: Categories) -> Image.Image:
    """``pixels`` with the boxes, class names and scores of ``detections`` drawn (a picture)."""
    return draw_detections(
        pixels,
        detections["boxes"],
        detections["labels"],
        detections["scores"],
        class_names=categories.names,
    )


def _predict_video(
    predictor: Predictor,
    categories: Categories,
    video: Path,
    plan: PredictionPlan,
    options: PredictOptions,
    run: PredictionRun,
) -> None:
    try:
        info = video_info(video)
    except VideoReadError as error:
        _report_failure(run, video, str(error))
        return
    stride = options.video_stride
    total = math.ceil(info.num_frames / stride) if info.num_frames else None
    bar = tqdm(total=total, desc=video.name, unit="frame", disable=not options.progress)
    encoder = _LazyVideoWriter(plan.annotated_path(video), info.frame_rate / stride)
    frames = background_iter(
        _prepared_frames(predictor, video, stride), ahead=2 * predictor.batch_size + 2
    )
    try:
        with (
            JsonLines(plan.frames_path(video)) as lines,
            encoder,
            BackgroundWriter() as writer,
            bar,
        ):
            for frame, found in predictor.predict_prepared(frames):
                kept = above_threshold(found, options.threshold)
                records = detection_records(kept, categories)
                lines.write(
                    {"frame": frame.index, "time": round(frame.time, 6), "detections": records}
                )
                writer.submit(partial(encoder.write, frame, kept, categories))
                run.num_frames += 1
                run.num_detections += len(records)
                bar.update()
    except VideoReadError as error:  # the frames before the failure are kept
        _report_failure(run, video, f"{error} (after {bar.n} frames)")
        return
    run.num_videos += 1


def _prepared_frames(
    predictor: Predictor, video: Path, stride: int
) -> Iterator[tuple[VideoFrame, PreparedImage]]:
    for frame in read_frames(video, stride=stride):
        yield frame, predictor.prepare(frame.pixels)


class _LazyVideoWriter:
    """Draws detections on frames and encodes them; the file is opened at the first frame
    (its size is the decoded frames' size), and finished on exit."""

    def __init__(self, path: Path, frame_rate: Fraction) -> None:
        self.path, self.frame_rate = path, frame_rate
        self._writer: VideoWriter | None = None

    def write(
        self, frame: VideoFrame, detections: dict[str, Tensor], categories: Categories
    ) -> None:
        drawing = _drawn(frame.pixels, detections, categories)
        if self._writer is None:
            height, width = int(frame.pixels.shape[1]), int(frame.pixels.shape[2])
            self._writer = VideoWriter(
                self.path, frame_rate=self.frame_rate, height=height, width=width
            )
        self._writer.write(np.asarray(drawing))

    def __enter__(self) -> _LazyVideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()
