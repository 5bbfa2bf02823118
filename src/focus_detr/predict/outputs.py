"""Where ``predict`` writes, checked before any work, and the records it writes as it goes.

Layout of the output folder::

    predictions.jsonl       one line per image, written as soon as the image is done
    predictions.json        COCO results of all images (written at the end, or on Ctrl-C)
    annotated/<name>        each image (and video, as .mp4) with its detections drawn
    videos/<name>.jsonl     one line per processed frame of each video
    focus_maps/<name>.png   with --focus-maps: where the encoder looked

Each input gets its own ``<name>`` (its file name stem, numbered when two inputs share one),
so the files of one input are easy to find and no two inputs write to the same file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torch import Tensor

from focus_detr.data.categories import Categories
from focus_detr.errors import UsageError
from focus_detr.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_image_files

__all__ = ["JsonLines", "PredictionPlan", "detection_records", "plan_prediction"]

RESULTS_JSON = "predictions.json"
RESULTS_JSONL = "predictions.jsonl"
# Annotated images keep these formats; others (TIFF, GIF, PPM...) are written as PNG.
_KEPT_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class PredictionPlan:
    """The inputs of a ``predict`` run and the files it will write.

    Attributes:
        out_dir: the output folder (exists and is writable once planned).
        images / videos: the input files, in order.
        names: the output name (stem) of each input.
        empty_folders: input folders in which nothing was found.
    """

    out_dir: Path
    images: tuple[Path, ...]
    videos: tuple[Path, ...]
    names: Mapping[Path, str]
    empty_folders: tuple[Path, ...] = field(default=())

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_JSON

    @property
    def lines_path(self) -> Path:
        return self.out_dir / RESULTS_JSONL

    def annotated_path(self, path: Path) -> Path:
        suffix = path.suffix.lower()
        if path in self.videos:
            suffix = ".mp4"
        elif suffix not in _KEPT_IMAGE_SUFFIXES:
            suffix = ".png"
        return self.out_dir / "annotated" / f"{self.names[path]}{suffix}"

    def frames_path(self, video: Path) -> Path:
        return self.out_dir / "videos" / f"{self.names[video]}.jsonl"

    def focus_map_path(self, image: Path) -> Path:
        return self.out_dir / "focus_maps" / f"{self.names[image]}.png"

    def output_paths(self, *, focus_maps: bool) -> list[Path]:
        """Every file the run may write."""
        paths = [self.results_path, self.lines_path]
        paths += [self.annotated_path(path) for path in (*self.images, *self.videos)]
        paths += [self.frames_path(video) for video in self.videos]
        if focus_maps:
            paths += [self.focus_map_path(image) for image in self.images]
        return paths


def plan_prediction(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    focus_maps: bool = False,
) -> PredictionPlan:
    """Find the inputs and check the output folder, before any model work.

    Folders are searched recursively (through symbolic links) for images and videos, skipping
    the output folder. The output folder is created.

    Raises:
        FileNotFoundError: an input does not exist.
        UsageError: nothing to process, an output folder that is a file or cannot be written,
            or an output file that would replace an input.
    """
    out_dir = Path(out_dir)
    files, empty_folders = _find_inputs(inputs, out_dir)
    if not files:
        suffixes = " ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
        raise UsageError(
            f"no images or videos found in {', '.join(map(str, inputs))} (looked for "
            f"{suffixes}; the --out folder is not searched)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the results")
    plan = PredictionPlan(
        out_dir=out_dir,
        images=tuple(path for path in files if path.suffix.lower() not in VIDEO_EXTENSIONS),
        videos=tuple(path for path in files if path.suffix.lower() in VIDEO_EXTENSIONS),
        names=_output_names(files),
        empty_folders=tuple(empty_folders),
    )
    _refuse_overwriting_inputs(files, plan.output_paths(focus_maps=focus_maps), out_dir)
    _check_writable(out_dir)
    return plan


def _find_inputs(
    inputs: Sequence[str | os.PathLike[str]], out_dir: Path
) -> tuple[list[Path], list[Path]]:
    """All input files (each once, in order), and the input folders that hold none."""
    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    files: list[Path] = []
    empty: list[Path] = []
    for item in inputs:
        found = list_image_files([item], extensions=extensions, exclude=[out_dir])
        if not found and Path(item).is_dir():
            empty.append(Path(item))
        files.extend(found)
    return list(dict.fromkeys(files)), empty


def _output_names(files: Sequence[Path]) -> dict[Path, str]:
    """A unique output stem per input: its own, numbered when taken (case-insensitively)."""
    names: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        candidate, counter = path.stem, 1
        while candidate.lower() in used:
            candidate = f"{path.stem}_{counter}"
            counter += 1
        used.add(candidate.lower())
        names[path] = candidate
    return names


def _refuse_overwriting_inputs(
    inputs: Sequence[Path], outputs: Sequence[Path], out_dir: Path
) -> None:
    real_inputs = {os.path.realpath(path): path for path in inputs}
    for output in outputs:
        source = real_inputs.get(os.path.realpath(output))
        if source is not None:
            raise UsageError(
                f"the results in --out {out_dir} would overwrite the input {source}; "
                "choose another --out folder"
            )


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise UsageError(f"--out {out_dir}: cannot write there ({error.strerror})") from error


class JsonLines(contextlib.AbstractContextManager["JsonLines"]):
    """Append JSON records to a file, one per line, each flushed at once (kept on a crash)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def above_threshold(detections: Mapping[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """The detections scoring at least ``threshold``."""
    keep = detections["scores"] >= threshold
    return {key: value[keep] for key, value in detections.items()}


def detection_records(
    detections: Mapping[str, Tensor], categories: Categories
) -> list[dict[str, object]]:
    """COCO-style ``bbox`` [x, y, w, h], ``score``, ``category_id`` and ``category_name``."""
    records = []
    for box, score, label in zip(
        detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist()
    ):
        x1, y1, x2, y2 = box
        records.append(
            {
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
                "category_id": categories.ids[label],
                "category_name": categories.names[label],
            }
        )
    return records
