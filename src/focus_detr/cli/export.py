"""``focus-detr export``: the whole detector as an ONNX graph or an OpenVINO IR, with its
metadata."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from focus_detr.cli import common

NAME = "export"
HELP = "export weights to ONNX or OpenVINO (then predict/eval --weights model.onnx or .xml)"
DESCRIPTION = (
    "Export the detector to one ONNX file (or an OpenVINO IR, --format openvino): padded uint8 "
    "images and their sizes in, each image's top detections out; batch, height and width "
    "dynamic unless --static. The preset, class names, test resize and configuration go into "
    "its metadata. --format openvino also converts an exported .onnx (--weights). See "
    "docs/deploy.md."
)

#: file suffix of each format's output
OUTPUT_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}
DEFAULT_OPSET = 18
#: options that an already exported graph has fixed (a conversion cannot change them)
_EXPORT_OPTIONS = (
    "preset",
    "keep_ratio",
    "opset",
    "static",
    "foreground_scores",
    "deformable_attention",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_source(parser, keep_ratio_help="encoder keep ratio to bake in")
    parser.add_argument(
        "--out", required=True, help="output file: .onnx, or .xml for --format openvino"
    )
    parser.add_argument(
        "--format",
        choices=sorted(OUTPUT_SUFFIXES),
        default="onnx",
        help="onnx (default), or an OpenVINO IR (model.xml + model.bin, float32)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)"
    )
    parser.add_argument(
        "--opset", type=common.positive_int, help=f"ONNX opset, 16..23 ({DEFAULT_OPSET})"
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
        help="GridSample ops (grid_sample, the default) or GatherElements only",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="--format openvino: quantize to INT8 with NNCF (needs --calibration-images)",
    )
    parser.add_argument(
        "--calibration-images",
        metavar="FOLDER",
        nargs="+",
        help="images (files or folders) to calibrate the INT8 quantization on, e.g. a "
        "training or validation split",
    )
    parser.add_argument(
        "--calibration-size",
        type=common.positive_int,
        default=300,
        help="calibration images used at most (300)",
    )


def run(args: argparse.Namespace) -> int:
    from focus_detr.predict.detector import runtime_for

    runtime = runtime_for(args.weights).name
    _check_output(args)
    _check_int8(args)
    if runtime == "torch":
        report = _export_checkpoint(args)
    elif runtime == "onnxruntime" and args.format == "openvino":
        report = _convert_onnx(args)
    else:
        raise common.UsageError(
            f"--weights {args.weights} is already exported; give a checkpoint (or a .onnx "
            "with --format openvino)"
        )
    print(
        f"wrote {report.path} ({report.size_bytes / 2**20:.1f} MiB) in {report.seconds:.0f} s; "
        f"run it with: focus-detr predict IMAGES --weights {report.path} --out OUT"
    )
    return 0


def _check_output(args: argparse.Namespace) -> None:
    """``--out`` has the format's suffix and, unless ``--overwrite``, does not exist."""
    suffix = OUTPUT_SUFFIXES[args.format]
    if not str(args.out).lower().endswith(suffix):
        raise common.UsageError(f"--out must name a {suffix} file for --format {args.format}")
    outputs = [Path(args.out)]
    if args.format == "openvino":
        from focus_detr.deploy.openvino_export import ir_files

        outputs = list(ir_files(args.out))
    taken = [str(path) for path in outputs if path.exists()]
    if taken and not args.overwrite:
        raise common.UsageError(
            f"{' and '.join(taken)} {'exist' if len(taken) > 1 else 'exists'}; choose another "
            "--out or pass --overwrite to replace it"
        )


def _check_int8(args: argparse.Namespace) -> None:
    """``--int8`` comes with ``--format openvino`` and calibration images (found here, before
    any export); ``args.calibration_files`` gets the image files (None without ``--int8``)."""
    args.calibration_files = None
    if not args.int8:
        if args.calibration_images:
            raise common.UsageError("--calibration-images is for --int8")
        return
    if args.format != "openvino":
        raise common.UsageError("--int8 quantizes an OpenVINO IR: add --format openvino")
    if not args.calibration_images:
        raise common.UsageError("--int8 needs --calibration-images (a folder of images)")
    from focus_detr.deploy.openvino_quantize import import_nncf
    from focus_detr.io import list_image_files

    import_nncf()
    files = list_image_files(args.calibration_images)
    if not files:
        raise common.UsageError(f"no images in {' '.join(args.calibration_images)}")
    args.calibration_files = files[: args.calibration_size]


def _export_checkpoint(args: argparse.Namespace) -> Any:
    """Export a checkpoint to ``args.format``; the report of the export."""
    from focus_detr.predict.detector import load_pytorch_model

    loaded = load_pytorch_model(args.weights, preset=args.preset, keep_ratio=args.keep_ratio)
    shape = "static {}x{}".format(*args.static) if args.static else "dynamic batch, height, width"
    opset = args.opset or DEFAULT_OPSET
    print(f"exporting to {args.out} ({args.format}, opset {opset}, {shape}); this takes minutes")
    options = dict(
        class_names=loaded.categories.names,
        category_ids=loaded.categories.ids,
        preset=loaded.preset,
        config=loaded.config,
        opset=opset,
        static_size=args.static,
        foreground_scores=args.foreground_scores,
        deformable_attention=args.deformable_attention or "grid_sample",
    )
    if args.format == "openvino":
        from focus_detr.deploy.openvino_export import export_openvino

        return export_openvino(
            loaded.model,
            args.out,
            calibration_images=args.calibration_files,
            calibration_size=args.calibration_size,
            **options,
        )
    from focus_detr.deploy.onnx_export import export_onnx

    return export_onnx(loaded.model, args.out, **options)


def _convert_onnx(args: argparse.Namespace) -> Any:
    """Convert the exported ONNX file ``args.weights`` to an OpenVINO IR."""
    from focus_detr.deploy.openvino_export import convert_onnx_to_openvino

    given = [name for name in _EXPORT_OPTIONS if getattr(args, name) not in (None, False)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise common.UsageError(
            f"{args.weights} is already exported: {options} cannot change it (export the "
            "checkpoint again instead)"
        )
    int8 = f", INT8 on {len(args.calibration_files)} images" if args.calibration_files else ""
    print(f"converting {args.weights} to {args.out}{int8}")
    return convert_onnx_to_openvino(
        args.weights,
        args.out,
        calibration_images=args.calibration_files,
        calibration_size=args.calibration_size,
    )
