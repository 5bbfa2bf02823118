"""One-image latency of PyTorch eager, ONNX Runtime and OpenVINO, alternating in one process.

The model is a preset with its own initialisation (``focus_detr.build_model(preset)``,
``torch.manual_seed(0)``); it is exported once to ONNX (and converted to an OpenVINO IR) in
``--workdir``, which later runs reuse. Every round times each runtime once on the same random
uint8 image, ``detector([image])`` end to end (padding and per-image results included), so that
a busy machine slows all of them alike; the table gives each runtime's median and minimum over
the rounds, and its ratio to PyTorch's median. Numbers in ``docs/deploy.md``.

OpenVINO is timed with the package's compile settings (``openvino``) and with the variants named
in ``--openvino-variants`` (:data:`VARIANTS`); ``--int8 MODEL.xml ...`` adds quantized IRs.

Usage::

    python benchmarks/bench_runtimes.py --preset focus_detr_r50_4scale_12ep --size 800x1333 \\
        --threads 2 --rounds 5 --workdir /tmp/bench_runtimes [--openvino-variants no-pinning]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import focus_detr
from focus_detr.deploy.onnx_runtime import OnnxRuntimeDetector
from focus_detr.deploy.openvino_export import convert_onnx_to_openvino
from focus_detr.deploy.openvino_runtime import OpenVinoDetector

#: OpenVINO compile properties to compare with the package's settings
VARIANTS: dict[str, dict[str, str]] = {
    "no-pinning": {"ENABLE_CPU_PINNING": "NO"},
    "pinning": {"ENABLE_CPU_PINNING": "YES"},
    "throughput": {"PERFORMANCE_HINT": "THROUGHPUT"},
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
}


def exported_files(model: focus_detr.FocusDETR, workdir: Path) -> tuple[Path, Path]:
    """The model's ONNX file and OpenVINO IR in ``workdir`` (exported unless already there)."""
    onnx_path, ir_path = workdir / "model.onnx", workdir / "model.xml"
    if not onnx_path.is_file():
        report = focus_detr.export_onnx(model, onnx_path)
        print(f"exported {onnx_path} in {report.seconds:.0f} s", file=sys.stderr)
    if not ir_path.is_file():
        convert_onnx_to_openvino(onnx_path, ir_path)
    return onnx_path, ir_path


def detectors(args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], object]]:
    """name -> a function that detects on one image, for every runtime timed."""
    torch.manual_seed(0)
    model = focus_detr.build_model(args.preset).eval()
    if args.keep_ratio is not None:
        model.set_keep_ratio(args.keep_ratio)
    onnx_path, ir_path = exported_files(model, args.workdir)
    threads = args.threads
    ort = OnnxRuntimeDetector.open(onnx_path, threads=threads)
    runs: dict[str, Callable[[torch.Tensor], object]] = {
        "torch": lambda image: model([image]),
        "onnxruntime": lambda image: ort([image]),
    }
    openvino = {"openvino": OpenVinoDetector.open(ir_path, threads=threads)}
    for name in args.openvino_variants:
        properties = VARIANTS[name]
        openvino[f"openvino {name}"] = OpenVinoDetector.open(
            ir_path, threads=threads, properties=properties
        )
    for path in args.int8:
        openvino[f"openvino int8 {path.stem}"] = OpenVinoDetector.open(path, threads=threads)
    for name, detector in openvino.items():
        runs[name] = lambda image, detector=detector: detector([image])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="focus_detr_r50_4scale_12ep")
    parser.add_argument("--size", default="800x1333", help="HxW of the image")
    parser.add_argument("--keep-ratio", type=float, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("bench_runtimes"))
    parser.add_argument("--openvino-variants", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--int8", type=Path, nargs="*", default=[], help="quantized IRs to time")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    height, width = (int(side) for side in args.size.split("x"))
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    runs = detectors(args)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run(image)
        for round_index in range(args.rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - started)
            print(
                f"round {round_index}: "
                + ", ".join(f"{name} {1e3 * t[-1]:.0f} ms" for name, t in times.items()),
                file=sys.stderr,
            )
    print_table(times, args)


def print_table(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    """The Markdown table: median, minimum and ratio to PyTorch's median, per runtime."""
    reference = statistics.median(times["torch"])
    print(f"{args.preset}, one {args.size} image, {args.threads} threads, {args.rounds} rounds\n")
    print("| runtime | median ms | min ms | / PyTorch |")
    print("| --- | ---: | ---: | ---: |")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {1e3 * median:.0f} | {1e3 * min(runs):.0f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
