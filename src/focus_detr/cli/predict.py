"""``focus-detr predict``: detections for image files, as COCO results and annotated copies."""

from __future__ import annotations

import argparse
import sys

from focus_detr.cli import common


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="detect objects in images; writes predictions.json and annotated copies",
        description="Detect objects in image files or folders (searched recursively).",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    common.add_model_source(parser, keep_ratio_help="encoder keep ratio (default: the model's)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--threshold", type=common.probability, default=0.3, help="minimum score in [0, 1] (0.3)"
    )
    common.add_device(parser)
    common.add_batch_size(parser)
    common.add_test_resize(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from focus_detr.inference import Predictor, load_model
    from focus_detr.predict import predict_files

    model, categories = load_model(
        args.weights,
        preset=args.preset,
        device=args.device or common.default_device(),
        keep_ratio=args.keep_ratio,
    )
    predictor = Predictor(
        model, min_size=args.min_size, max_size=args.max_size, batch_size=args.batch_size
    )
    result = predict_files(predictor, categories, args.inputs, args.out, threshold=args.threshold)
    print(
        f"{result.num_images} images (short side {predictor.min_size}, long side <= "
        f"{predictor.max_size}), {result.num_detections} detections >= {args.threshold} -> "
        f"{result.results_path}"
    )
    if result.failed:
        print(f"{len(result.failed)} files could not be read:", file=sys.stderr)
        for path, reason in result.failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
