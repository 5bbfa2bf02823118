"""The ``focus-detr`` command line: ``presets``, ``predict``, ``parity`` (and more)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from focus_detr.engine.commands import add_eval_command, add_train_command


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_presets(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("presets", help="list the named models (model zoo rows)")
    parser.set_defaults(run=_run_presets)


def _run_presets(args: argparse.Namespace) -> int:
    from focus_detr.presets import get_preset, preset_names

    for name in preset_names():
        preset = get_preset(name)
        ap = f"{preset.coco_ap:.1f}" if preset.coco_ap is not None else "-"
        url = preset.weights_url or "(no released weights)"
        print(f"{name:45s} AP {ap:>5s}  {preset.description}\n{'':45s} {url}")
    return 0


def _add_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="detect objects in images; writes predictions.json and annotated copies",
        description="Detect objects in image files or folders (searched recursively).",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--weights", required=True, help="checkpoint: path, .zip or URL")
    parser.add_argument("--preset", help="model preset (required for detrex releases)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="minimum score (0.3)")
    parser.add_argument("--device", default=_default_device(), help="cpu or cuda")
    parser.add_argument("--keep-ratio", type=float, help="encoder keep ratio (default: model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--min-size", type=int, help="short side after resizing (default: the model's recipe)"
    )
    parser.add_argument("--max-size", type=int, help="long side limit (default: the recipe's)")
    parser.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from focus_detr.inference import Predictor, load_model
    from focus_detr.predict import predict_files

    model, categories = load_model(
        args.weights, preset=args.preset, device=args.device, keep_ratio=args.keep_ratio
    )
    predictor = Predictor(
        model, min_size=args.min_size, max_size=args.max_size, batch_size=args.batch_size
    )
    run = predict_files(predictor, categories, args.inputs, args.out, threshold=args.threshold)
    print(
        f"{run.num_images} images (short side {predictor.min_size}, long side <= "
        f"{predictor.max_size}), {run.num_detections} detections >= {args.threshold} -> "
        f"{run.results_path}"
    )
    if run.failed:
        print(f"{len(run.failed)} files could not be read:", file=sys.stderr)
        for path, reason in run.failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _add_parity(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "parity",
        help="compare with a reference fixture computed by the official code",
        description=(
            "Build the fixture's architecture in float64 with weights synthesised from a "
            "state-dict manifest, run it on the fixture's image and compare every array."
        ),
    )
    parser.add_argument("fixture", help=".npz written by the reference script")
    parser.add_argument("--manifest", required=True, help="keys/<config>.json(.gz)")
    parser.add_argument("--preset", help="preset to build (default: from the fixture's config)")
    parser.set_defaults(run=_run_parity)


def _run_parity(args: argparse.Namespace) -> int:
    import numpy as np

    import focus_detr
    from focus_detr.parity import (
        compare_with_reference,
        preset_for_config,
        read_manifest,
        synthesize_state_dict,
    )

    reference = dict(np.load(args.fixture))
    manifest = read_manifest(args.manifest)
    preset = args.preset or preset_for_config(reference.get("config"), manifest.get("config"))
    if preset is None:
        print("error: cannot tell the preset from the fixture; pass --preset", file=sys.stderr)
        return 2
    model = focus_detr.build_model(preset, dtype=torch.float64).eval()
    focus_detr.load_checkpoint(model, synthesize_state_dict(manifest))
    print(f"preset {preset}, fixture {args.fixture}")
    report = compare_with_reference(model, reference)
    print(report.format())
    print("PASSED" if report.passed else f"FAILED: {len(report.failures())} arrays differ")
    return 0 if report.passed else 1


def _add_benchmark(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "benchmark",
        help="FLOPs, latency and memory of the Focus encoder vs the dense baseline",
        description=(
            "Measure the preset with its keep ratio, any extra --keep-ratio values and the "
            "dense baseline (keep ratio 1, cascade of ones) in one run: GFLOPs by stage, "
            "latency (median and quartiles after warm-up) by stage and end to end, peak memory."
        ),
    )
    parser.add_argument("--preset", default="focus_detr_r50_4scale_12ep")
    parser.add_argument("--size", default="800x1333", help="HxW of the input images")
    parser.add_argument("--keep-ratio", type=float, nargs="*", default=[], help="extra ratios")
    parser.add_argument("--device", default=_default_device())
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--weights", help="optional checkpoint (random weights otherwise)")
    parser.add_argument("--train-step", action="store_true", help="also time a training step")
    parser.add_argument("--no-flops", action="store_true", help="skip operation counting")
    parser.add_argument("--json", help="write the full results here")
    parser.set_defaults(run=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from focus_detr.benchmark.run import BenchmarkSettings, format_report, run_benchmark

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size must look like 800x1333, got {args.size!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        preset=args.preset,
        height=height,
        width=width,
        batch=args.batch,
        device=args.device,
        dtype=args.dtype,
        keep_ratios=tuple(args.keep_ratio),
        runs=args.runs,
        warmup=args.warmup,
        train_step=args.train_step,
        weights=args.weights,
        count_flops=not args.no_flops,
    )
    report = run_benchmark(settings)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.to_json())
    return 0


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_presets,
    _add_predict,
    _add_parity,
    _add_benchmark,
    add_train_command,
    add_eval_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focus-detr", description="Focus-DETR object detection in plain PyTorch."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``focus-detr`` console script."""
    args = build_parser().parse_args(argv)
    from focus_detr.checkpoint import CheckpointError
    from focus_detr.config import ConfigError

    device = str(getattr(args, "device", None) or "")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {device} asked for, but CUDA is not available here", file=sys.stderr
        )
        return 2
    try:
        return int(args.run(args))
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
