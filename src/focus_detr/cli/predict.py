"""``focus-detr predict``: detections for images and videos, with annotated copies."""

from __future__ import annotations

import argparse
import sys

from focus_detr.cli import common

NAME = "predict"
HELP = "detect objects in images and videos; writes predictions and annotated copies"
DESCRIPTION = (
    "Detect objects in image and video files or folders (searched recursively). "
    "Results are written as they come: OUT/predictions.jsonl (one line per image), "
    "OUT/predictions.json (COCO results, at the end or on Ctrl-C), OUT/annotated/, "
    "OUT/videos/<name>.jsonl (one line per frame) and OUT/focus_maps/."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image and video files and/or folders")
    common.add_model_source(parser, keep_ratio_help="encoder keep ratio (default: the model's)")
    common.add_backend(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--threshold", type=common.probability, default=0.3, help="minimum score in [0, 1] (0.3)"
    )
    common.add_device(parser)
    common.add_batch_size(parser, help="images, frames or tiles per forward (1)")
    common.add_test_resize(parser)
    parser.add_argument(
        "--nms",
        type=common.probability,
        metavar="IOU",
        help="class-wise NMS at this IoU (default: off, the model's own output)",
    )
    parser.add_argument(
        "--slice",
        type=common.image_size,
        metavar="HxW",
        help="sliced inference for large images: the whole image plus HxW tiles, merged",
    )
    parser.add_argument(
        "--slice-overlap",
        type=_overlap,
        default=0.2,
        metavar="R",
        help="fraction of a tile shared with its neighbour, in [0, 1) (0.2)",
    )
    parser.add_argument(
        "--vid-stride",
        type=common.positive_int,
        default=1,
        metavar="K",
        help="process every K-th frame of videos (1)",
    )
    parser.add_argument(
        "--focus-maps",
        action="store_true",
        help="also draw where the encoder looked, per image (OUT/focus_maps/)",
    )
    parser.add_argument(
        "--workers", type=common.non_negative_int, default=2, help="image reading threads (2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overlap(text: str) -> float:
    value = common.probability(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from focus_detr.predict.detector import load_model, runtime_for
    from focus_detr.predict.outputs import plan_prediction
    from focus_detr.predict.predictor import Predictor
    from focus_detr.predict.run import PredictOptions, run_prediction

    common.check_weights_file(args.weights)
    runtime = runtime_for(args.weights, args.backend)
    if args.focus_maps and not runtime.capabilities.raw_outputs:
        raise common.UsageError(
            f"--focus-maps needs the PyTorch checkpoint (the encoder's token trace is not an "
            f"output of an exported graph; {runtime.name} runs {args.weights}); give the .pth "
            "it was exported from"
        )
    plan = plan_prediction(args.inputs, args.out, focus_maps=args.focus_maps)  # before any work
    for folder in plan.empty_folders:
        print(f"warning: no images or videos in {folder}", file=sys.stderr)
    model, categories = load_model(
        args.weights,
        preset=args.preset,
        device=args.device or common.default_device(),
        keep_ratio=args.keep_ratio,
        runtime=runtime.name,
    )
    predictor = Predictor(
        model,
        min_size=args.min_size,
        max_size=args.max_size,
        batch_size=args.batch_size,
        nms_iou=args.nms,
        slice_size=args.slice,
        slice_overlap=args.slice_overlap,
    )
    options = PredictOptions(
        threshold=args.threshold,
        video_stride=args.vid_stride,
        focus_maps=args.focus_maps,
        progress=not args.no_progress,
        workers=args.workers,
    )
    try:
        result = run_prediction(predictor, categories, plan, options)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the results so far are in {plan.lines_path} and {plan.results_path}",
            file=sys.stderr,
        )
        return 130
    videos = f", {result.num_videos} videos ({result.num_frames} frames)" if plan.videos else ""
    print(
        f"{result.num_images} images{videos} (short side {predictor.min_size}, long side <= "
        f"{predictor.max_size}), {result.num_detections} detections >= {args.threshold} -> "
        f"{plan.out_dir}; {result.seconds:.1f} s, {result.items_per_second:.2f} "
        f"{'images and frames' if plan.videos else 'images'}/s ({runtime.name}, batch "
        f"{args.batch_size})"
    )
    if result.failed:
        print(f"{len(result.failed)} files could not be read:", file=sys.stderr)
        for path, reason in result.failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
