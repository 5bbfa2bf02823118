"""``focus-detr export``: the whole detector as an ONNX graph, with its metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from focus_detr.cli import common

NAME = "export"
HELP = "export weights to ONNX (run it with predict/eval --weights model.onnx)"
DESCRIPTION = (
    "Export the detector to one ONNX file: padded uint8 images and their sizes in, "
    "each image's top detections out; batch, height and width dynamic unless --static. "
    "The preset, class names, test resize and configuration go into its metadata. "
    "See docs/deploy.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_source(parser, keep_ratio_help="encoder keep ratio to bake in")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)"
    )
    parser.add_argument(
        "--opset", type=common.positive_int, default=18, help="ONNX opset, 16..23 (18)"
    )
    parser.add_argument(
        "--static",
        type=common.image_size,
        metavar="HxW",
        help="export for this one canvas size (constant shapes, e.g. for TensorRT)",
    )
    parser.add_argument(
        "--foreground-scores",
        action="store_true",
        help="also output every token's foreground logit",
    )
    parser.add_argument(
        "--deformable-attention",
        choices=["grid_sample", "corner_gather"],
        default="grid_sample",
        help="GridSample ops (default) or GatherElements only",
    )


def run(args: argparse.Namespace) -> int:
    from focus_detr.deploy.onnx_export import export_onnx
    from focus_detr.predict.detector import load_pytorch_model, runtime_for

    if runtime_for(args.weights).name != "torch":
        raise common.UsageError(f"--weights {args.weights} is already exported; give a checkpoint")
    if not str(args.out).lower().endswith(".onnx"):
        raise common.UsageError(f"--out must name a .onnx file, got {args.out}")
    if Path(args.out).exists() and not args.overwrite:
        raise common.UsageError(
            f"{args.out} exists; choose another --out or pass --overwrite to replace it"
        )
    loaded = load_pytorch_model(args.weights, preset=args.preset, keep_ratio=args.keep_ratio)
    shape = "static {}x{}".format(*args.static) if args.static else "dynamic batch, height, width"
    print(f"exporting to {args.out} (opset {args.opset}, {shape}); this takes minutes")
    report = export_onnx(
        loaded.model,
        args.out,
        class_names=loaded.categories.names,
        category_ids=loaded.categories.ids,
        preset=loaded.preset,
        config=loaded.config,
        opset=args.opset,
        static_size=args.static,
        foreground_scores=args.foreground_scores,
        deformable_attention=args.deformable_attention,
    )
    print(
        f"wrote {report.path} ({report.size_bytes / 2**20:.1f} MiB) in {report.seconds:.0f} s; "
        f"run it with: focus-detr predict IMAGES --weights {report.path} --out OUT"
    )
    return 0
