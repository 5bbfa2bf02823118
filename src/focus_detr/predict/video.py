"""Reading and writing videos with PyAV (``pip install "focus-detr[video]"``).

PyAV is imported on first use, so the rest of the package works without it. Frames come out as
upright RGB ``uint8 [3, H, W]`` tensors, like :func:`focus_detr.io.read_image` gives images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

__all__ = ["VideoFrame", "VideoInfo", "VideoReadError", "VideoWriter", "read_frames", "video_info"]

_INSTALL_HINT = 'reading and writing videos needs PyAV: pip install "focus-detr[video]"'


class VideoReadError(Exception):
    """A video file cannot be opened or decoded; the message names the file and the reason."""

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = Path(path)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says.

    Attributes:
        frame_rate: frames per second (average).
        num_frames: number of frames, or None when the container does not record it.
        height / width: frame size in pixels.
    """

    frame_rate: Fraction
    num_frames: int | None
    height: int
    width: int


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    Attributes:
        index: position in the video (0 = first frame), counting every frame.
        time: presentation time in seconds.
        pixels: ``uint8 [3, H, W]`` RGB.
    """

    index: int
    time: float
    pixels: Tensor


def pyav() -> ModuleType:
    """The ``av`` module; ImportError with the install command when it is missing."""
    try:
        import av
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return av


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, frame count and size of the first video stream of ``path``."""
    av = pyav()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"cannot read video {path}: it has no video stream", path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return VideoInfo(
                Fraction(rate), int(stream.frames) or None, stream.height, stream.width
            )
    except (av.error.FFmpegError, OSError) as error:
        raise VideoReadError(f"cannot read video {path}: {error}", path) from error


def read_frames(path: str | os.PathLike[str], *, stride: int = 1) -> Iterator[VideoFrame]:
    """Decode every ``stride``-th frame of the first video stream (frames 0, stride, ...).

    Raises:
        VideoReadError: the file cannot be opened, or decoding fails part-way (the frames
            before the failure have been yielded).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    av = pyav()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's own decoding threads
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue  # inter-coded frames must be decoded anyway; skip the conversion
                time = float(frame.time) if frame.time is not None else index / rate
                rgb = frame.to_ndarray(format="rgb24")
                yield VideoFrame(index, time, torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise VideoReadError(f"cannot read video {path}: {error}", path) from error


class VideoWriter(contextlib.AbstractContextManager["VideoWriter"]):
    """Encode RGB frames into an H.264 ``.mp4`` (MPEG-4 Part 2 when FFmpeg lacks libx264).

    Odd frame sides are padded by one black row/column (4:2:0 chroma needs even sides). Use as
    a context manager: leaving it flushes the encoder and finishes the file, also on an error,
    so the frames written so far make a playable video.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, frame_rate: Fraction, height: int, width: int
    ):
        av = pyav()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._av = av
        self._container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=frame_rate)
        self._stream.height, self._stream.width = height + height % 2, width + width % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        self.num_frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``uint8 [H, W, 3]`` RGB frame."""
        height, width = self._stream.height, self._stream.width
        if rgb.shape[:2] != (height, width):
            rgb = np.pad(rgb, ((0, height - rgb.shape[0]), (0, width - rgb.shape[1]), (0, 0)))
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
