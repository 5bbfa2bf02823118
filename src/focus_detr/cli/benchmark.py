"""``focus-detr benchmark``: FLOPs, latency and memory of the Focus encoder vs the dense one."""

from __future__ import annotations

import argparse

from focus_detr.cli import common

NAME = "benchmark"
HELP = "FLOPs, latency and memory of the Focus encoder vs the dense baseline"
DESCRIPTION = (
    "Measure the model at its keep ratio (or at each --keep-ratio) and the dense "
    "baseline (keep ratio 1, cascade of ones) in one run: GFLOPs by stage, latency "
    "(median and quartiles after warm-up) by stage and end to end, peak memory."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="focus_detr_r50_4scale_12ep")
    parser.add_argument(
        "--size", type=common.image_size, default=(800, 1333), help="HxW of the input images"
    )
    parser.add_argument(
        "--keep-ratio",
        type=common.keep_ratio,
        nargs="+",
        help="encoder keep ratio(s) to measure (default: the model's)",
    )
    common.add_device(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--batch-size", "--batch", type=common.positive_int, default=1, help="images per forward"
    )
    parser.add_argument(
        "--runs", type=common.positive_int, default=10, help="timed runs per variant"
    )
    parser.add_argument("--warmup", type=common.non_negative_int, default=2)
    parser.add_argument(
        "--threads", type=common.positive_int, help="CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=common.RUNTIME_NAMES,
        default=["torch"],
        help="runtimes to time side by side: torch (default), onnxruntime, openvino (the "
        "exported ones export the Focus variants to a temporary ONNX file first)",
    )
    parser.add_argument("--weights", help="optional checkpoint (random weights otherwise)")
    parser.add_argument("--train-step", action="store_true", help="also time a training step")
    parser.add_argument(
        "--no-flops",
        action="store_true",
        help="skip operation counting (and so the compute-bound table)",
    )
    parser.add_argument(
        "--no-peak", action="store_true", help="skip measuring the machine's dense rate"
    )
    parser.add_argument("--json", help="write the full results here")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from focus_detr.benchmark.report import format_report
    from focus_detr.benchmark.run import BenchmarkSettings, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    settings = BenchmarkSettings(
        preset=args.preset,
        height=height,
        width=width,
        batch_size=args.batch_size,
        device=args.device or common.default_device(),
        dtype=args.dtype,
        keep_ratios=tuple(args.keep_ratio or ()),
        runs=args.runs,
        warmup=args.warmup,
        train_step=args.train_step,
        weights=args.weights,
        count_flops=not args.no_flops,
        measure_peak=not (args.no_peak or args.no_flops),
        backends=tuple(dict.fromkeys(args.backend)),
    )
    report = run_benchmark(settings)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.to_json())
    return 0
