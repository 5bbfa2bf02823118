"""Throughput of ``predict`` (images, video) and recall of sliced inference on large images.

Three measurements, each printed as a Markdown table (numbers in ``docs/predict.md``):

- ``images``: images/s of ``predict_files`` on a folder (the built-in val split), against the
  sequential loop ``predict`` ran before (read, one forward per image, draw, save, in turn).
  Model loading is excluded; the annotated copies and the JSON files are written.
- ``video``: frames/s of ``predict_files`` on a video made by panning over a mosaic of the val
  images (written first with PyAV, not timed).
- ``slicing``: large images made of a grid of val images (their annotations shifted), run whole
  and sliced; recall and precision at IoU >= 0.5 (same class, greedy by score), per COCO size.

Usage::

    python benchmarks/bench_predict.py images --weights model_final.pth --data data/synthetic
    python benchmarks/bench_predict.py video --weights model_final.pth --data data/synthetic
    python benchmarks/bench_predict.py slicing --weights model_final.pth --data data/synthetic
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import torch

import focus_detr
from focus_detr.io import list_image_files, read_image
from focus_detr.ops.boxes import box_iou
from focus_detr.predict.draw import draw_detections, save_image
from focus_detr.predict.run import predict_files

CELL = 256  # mosaic cell: the val images are 160-256 pixels


def sequential_loop(predictor, categories, folder: Path, out: Path, threshold: float) -> int:
    """What ``predict`` did before the pipeline: one image at a time, everything in turn."""
    results = []
    files = list_image_files([folder])
    for path in files:
        image = read_image(path)
        found = predictor([image])[0]
        keep = found["scores"] >= threshold
        boxes, scores, labels = (found[k][keep] for k in ("boxes", "scores", "labels"))
        results.extend({"file_name": str(path), "bbox": b} for b in boxes.tolist())
        drawing = draw_detections(image, boxes, labels, scores, class_names=categories.names)
        save_image(drawing, out / "annotated" / path.name)
    (out / "predictions.json").write_text(json.dumps(results))
    return len(files)


def _median_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` rounds, after one untimed round; the runs
    alternate within a round, so a change of machine load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            if round_index > 0:
                times[name].append(seconds)
            print(f"round {round_index}: {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_images(args: argparse.Namespace) -> None:
    model, categories = focus_detr.load_model(args.weights)
    folder = Path(args.data) / "val"
    count = len(list_image_files([folder]))
    print(f"{count} images, {torch.get_num_threads()} torch threads, median of {args.repeats}\n")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        runs: dict[str, Callable[[], object]] = {
            "sequential loop (before) | 1": partial(
                sequential_loop, focus_detr.Predictor(model), categories, folder, out / "seq", 0.3
            )
        }
        for batch in args.batch_sizes:
            runs[f"pipeline, {args.workers} reading threads | {batch}"] = partial(
                predict_files,
                focus_detr.Predictor(model, batch_size=batch),
                categories,
                [folder],
                out / f"batch{batch}",
                progress=False,
                workers=args.workers,
            )
        seconds = _median_seconds(runs, args.repeats)
    print("| run | batch | images/s |\n| --- | --- | --- |")
    for name, value in seconds.items():
        print(f"| {name} | {count / value:.1f} |")


def write_panning_video(path: Path, folder: Path, num_frames: int, size: tuple[int, int]) -> None:
    """A video panning right over a mosaic of the images in ``folder`` (objects move)."""
    import av

    mosaic, _ = build_mosaic(folder, rows=2, columns=8, first=0)
    height, width = size
    step = (mosaic.shape[2] - width) / max(1, num_frames - 1)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for index in range(num_frames):
            left = round(index * step)
            rgb = mosaic[:, :height, left : left + width].permute(1, 2, 0).contiguous().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def bench_video(args: argparse.Namespace) -> None:
    model, categories = focus_detr.load_model(args.weights)
    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "panning.mp4"
        write_panning_video(video, Path(args.data) / "val", args.frames, (CELL, 320))
        runs: dict[str, Callable[[], object]] = {
            str(batch): partial(
                predict_files,
                focus_detr.Predictor(model, batch_size=batch),
                categories,
                [video],
                Path(scratch) / f"batch{batch}",
                progress=False,
            )
            for batch in args.batch_sizes
        }
        seconds = _median_seconds(runs, args.repeats)
    print(f"{args.frames} frames of 256x320, {torch.get_num_threads()} torch threads\n")
    print("| batch | frames/s |\n| --- | --- |")
    for name, value in seconds.items():
        print(f"| {name} | {args.frames / value:.1f} |")


def build_mosaic(folder: Path, rows: int, columns: int, first: int) -> tuple[torch.Tensor, list]:
    """Images ``first...`` of a COCO split folder in a grid of CELL-pixel cells, on black; the
    annotations shifted with them as ``(label, [x1, y1, x2, y2])``."""
    coco = json.loads((folder.parent / "annotations" / f"instances_{folder.name}.json").read_text())
    images = sorted(coco["images"], key=lambda entry: entry["file_name"])
    mosaic = torch.zeros(3, rows * CELL, columns * CELL, dtype=torch.uint8)
    objects = []
    for slot in range(rows * columns):
        entry = images[(first + slot) % len(images)]
        top, left = (slot // columns) * CELL, (slot % columns) * CELL
        pixels = read_image(folder / entry["file_name"])
        mosaic[:, top : top + pixels.shape[1], left : left + pixels.shape[2]] = pixels
        for annotation in coco["annotations"]:
            if annotation["image_id"] == entry["id"]:
                x, y, w, h = annotation["bbox"]
                box = [left + x, top + y, left + x + w, top + y + h]
                objects.append((annotation["category_id"] - 1, box))
    return mosaic, objects


def match(found: dict, objects: list, threshold: float) -> tuple[np.ndarray, int]:
    """Which objects a detection (score >= threshold, same class, IoU >= 0.5) found, greedily
    by score; and the number of detections kept."""
    keep = found["scores"] >= threshold
    boxes, labels = found["boxes"][keep], found["labels"][keep]
    truth = torch.tensor([box for _, box in objects], dtype=torch.float32)
    truth_labels = torch.tensor([label for label, _ in objects])
    hit = np.zeros(len(objects), dtype=bool)
    if len(boxes):
        iou, _ = box_iou(boxes, truth)
        for index in range(len(boxes)):  # boxes come by decreasing score
            candidates = (
                (iou[index] >= 0.5) & (truth_labels == labels[index]) & ~torch.from_numpy(hit)
            )
            if candidates.any():
                hit[int(torch.argmax(iou[index] * candidates))] = True
    return hit, int(keep.sum())


def bench_slicing(args: argparse.Namespace) -> None:
    model, _ = focus_detr.load_model(args.weights)
    variants = {
        "whole image": focus_detr.Predictor(model),
        f"sliced {args.tile}x{args.tile}, overlap {args.overlap}": focus_detr.Predictor(
            model, slice_size=args.tile, slice_overlap=args.overlap, batch_size=8
        ),
    }
    folder = Path(args.data) / "val"
    mosaics = [
        build_mosaic(folder, args.grid, args.grid, first=k * args.grid**2)
        for k in range(args.mosaics)
    ]
    side = args.grid * CELL
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for _, objects in mosaics for _, b in objects])
    sizes = {
        "small": areas < 32**2,
        "medium": (areas >= 32**2) & (areas < 96**2),
        "large": areas >= 96**2,
    }
    print(f"{args.mosaics} images of {side}x{side}, {len(areas)} objects ", end="")
    print(", ".join(f"{int(m.sum())} {name}" for name, m in sizes.items()) + "\n")
    print("| run | recall | small | medium | large | precision | seconds/image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, predictor in variants.items():
        hits, kept, start = [], 0, time.perf_counter()
        for mosaic, objects in mosaics:
            hit, count = match(predictor([mosaic])[0], objects, args.threshold)
            hits.append(hit)
            kept += count
        seconds = (time.perf_counter() - start) / len(mosaics)
        hit = np.concatenate(hits)
        by_size = " | ".join(f"{hit[m].mean():.3f}" for m in sizes.values())
        precision = hit.sum() / max(kept, 1)
        print(f"| {name} | {hit.mean():.3f} | {by_size} | {precision:.3f} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("images", "video", "slicing"))
    parser.add_argument("--weights", required=True, help="a focus-detr checkpoint")
    parser.add_argument("--data", required=True, help="the synthetic dataset folder")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--grid", type=int, default=6, help="mosaic of grid x grid images")
    parser.add_argument("--mosaics", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--threads", type=int, help="torch compute threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"images": bench_images, "video": bench_video, "slicing": bench_slicing}[args.what](args)


if __name__ == "__main__":
    main()
