"""``focus-detr benchmark``: Focus encoder vs the dense baseline, in one run.

For each variant (the preset's keep ratio, any extra ``--keep-ratio``, and the dense baseline
``keep_ratio=1`` with a cascade of ones) it reports FLOPs by stage, end-to-end latency (median
and quartiles after warm-up), latency by stage, peak memory and, optionally, the time and
memory of a training step. With the ``onnxruntime`` backend the Focus variants are also
exported to ONNX and timed with ONNX Runtime (export time and file size reported).
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from focus_detr.benchmark.flops import count_operations
from focus_detr.benchmark.onnx_runtime import OnnxRuntimeTiming, measure_onnx_runtime
from focus_detr.benchmark.timing import Latency, measure_latency, peak_memory, stage_latency
from focus_detr.config import LossConfig
from focus_detr.losses import build_criterion, prepare_targets
from focus_detr.models.build import build_model
from focus_detr.models.detector import FocusDETR
from focus_detr.models.stages import STAGES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("torch", "onnxruntime")


@dataclass
class BenchmarkSettings:
    preset: str = "focus_detr_r50_4scale_12ep"
    height: int = 800
    width: int = 1333
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    keep_ratios: tuple[float, ...] = ()
    runs: int = 10
    warmup: int = 2
    train_step: bool = False
    weights: str | None = None
    count_flops: bool = True
    backends: tuple[str, ...] = ("torch",)


@dataclass
class VariantResult:
    name: str
    keep_ratio: float
    cascade: tuple[float, ...]
    tokens_per_layer: list[int]
    gflops: dict[str, float] = field(default_factory=dict)
    selection_mops: dict[str, float] = field(default_factory=dict)
    movement_mops: dict[str, float] = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    train_step_s: list[float] = field(default_factory=list)
    train_peak_memory_mb: float | None = None
    onnxruntime: OnnxRuntimeTiming | None = None

    @property
    def median_s(self) -> float:
        """Median PyTorch latency (NaN when PyTorch was not timed)."""
        return Latency(self.latency_s).median if self.latency_s else float("nan")


@dataclass
class BenchmarkReport:
    settings: BenchmarkSettings
    machine: dict[str, str]
    variants: list[VariantResult]

    def to_json(self) -> str:
        variants: list[dict[str, object]] = []
        data = {"settings": asdict(self.settings), "machine": self.machine, "variants": variants}
        for variant in self.variants:
            entry = asdict(variant)
            entry["median_s"] = variant.median_s
            entry["gflops_total"] = sum(variant.gflops.values())
            variants.append(entry)
        return json.dumps(data, indent=2)


def _machine(device: torch.device) -> dict[str, str]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _variants(
    model: FocusDETR, keep_ratios: Sequence[float]
) -> list[tuple[str, float, tuple[float, ...]]]:
    """The Focus model at each keep ratio (default: its own), then the dense baseline."""
    cascade = tuple(model.cascade)
    ratios = dict.fromkeys(float(r) for r in (keep_ratios or (model.keep_ratio,)))
    variants = [(f"focus rho={ratio:g}", ratio, cascade) for ratio in ratios]
    variants.append(("dense", 1.0, (1.0,) * len(cascade)))
    return variants


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def _random_images(settings: BenchmarkSettings, device: torch.device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (3, settings.height, settings.width)
    return [
        torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).to(device)
        for _ in range(settings.batch_size)
    ]


def run_benchmark(settings: BenchmarkSettings) -> BenchmarkReport:
    """Build the preset (random or given weights) and measure every variant."""
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    model = build_model(settings.preset).to(device).eval()
    if settings.weights:
        from focus_detr.weights.checkpoint import load_checkpoint

        load_checkpoint(model, settings.weights)
    images = _random_images(settings, device)
    results = []
    for name, ratio, cascade in _variants(model, settings.keep_ratios):
        model.set_keep_ratio(ratio, cascade)
        results.append(_measure_variant(model, images, name, settings, device, dtype))
    return BenchmarkReport(settings=settings, machine=_machine(device), variants=results)


def _measure_variant(
    model: FocusDETR,
    images: list[torch.Tensor],
    name: str,
    settings: BenchmarkSettings,
    device: torch.device,
    dtype: torch.dtype,
) -> VariantResult:
    def forward() -> object:
        with torch.inference_mode(), _autocast(device, dtype):
            return model(images)

    with torch.inference_mode():
        raw = model(images[:1], raw=True)
    result = VariantResult(
        name=name,
        keep_ratio=model.keep_ratio,
        cascade=tuple(model.cascade),
        tokens_per_layer=[int(c) for c in raw.encoder.token_counts[0].tolist()],
    )
    if "onnxruntime" in settings.backends and not name.startswith("dense"):
        if dtype != torch.float32:
            raise ValueError("the onnxruntime backend is timed in float32 only")
        result.onnxruntime = measure_onnx_runtime(
            model, images, device=device, warmup=settings.warmup, runs=settings.runs
        )
    if "torch" not in settings.backends:
        return result
    if settings.count_flops:
        # under inference_mode the dispatch-level counter sees nothing: count under no_grad
        def counted_forward() -> object:
            with _autocast(device, dtype):
                return model(images)

        counts = count_operations(counted_forward)
        scale = 1.0 / settings.batch_size
        result.gflops = {k: v * scale / 1e9 for k, v in counts.flops.items()}
        result.selection_mops = {k: v * scale / 1e6 for k, v in counts.selection.items()}
        result.movement_mops = {k: v * scale / 1e6 for k, v in counts.movement.items()}
    latency = measure_latency(forward, device, warmup=settings.warmup, repeats=settings.runs)
    result.latency_s = latency.runs
    result.stage_s = stage_latency(forward, device, repeats=max(1, min(3, settings.runs)))
    result.peak_memory_mb = peak_memory(forward, device) / 2**20
    if settings.train_step:
        _measure_training(model, images, result, settings, device, dtype)
    return result


def _measure_training(
    model: FocusDETR,
    images: list[torch.Tensor],
    result: VariantResult,
    settings: BenchmarkSettings,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    criterion = build_criterion(LossConfig(), model.config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    raw_targets = []
    for image in images:
        height, width = image.shape[-2:]
        corners = torch.rand(6, 2, 2, generator=generator).sort(dim=1).values
        boxes = torch.stack(
            [
                corners[:, 0, 0] * width,
                corners[:, 0, 1] * height,
                corners[:, 1, 0] * width,
                corners[:, 1, 1] * height,
            ],
            dim=1,
        )
        labels = torch.randint(0, model.num_classes, (6,), generator=generator)
        raw_targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    sizes = torch.tensor([list(image.shape[-2:]) for image in images], device=device)
    targets = prepare_targets(raw_targets, sizes)

    def step() -> None:
        with _autocast(device, dtype):
            outputs = model(images, targets, raw=True)
            loss = criterion.weighted_total(criterion(outputs, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    try:
        latency = measure_latency(step, device, warmup=1, repeats=max(1, settings.runs // 2))
        memory = peak_memory(step, device)
    finally:
        model.eval()
    result.train_step_s = latency.runs
    result.train_peak_memory_mb = memory / 2**20


def format_report(report: BenchmarkReport) -> str:
    """A readable table: one column per variant, rows per stage."""
    variants = report.variants
    settings = report.settings
    header = (
        f"{settings.preset}  {settings.height}x{settings.width}  batch {settings.batch_size}  "
        f"{settings.device} {settings.dtype}  ({report.machine.get('gpu', report.machine['cpu'])}, "
        f"{report.machine['threads']} threads, torch {report.machine['torch']})"
    )
    width = max(14, *(len(v.name) + 2 for v in variants))
    lines = [header, "", f"{'':28s}" + "".join(f"{v.name:>{width}s}" for v in variants)]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"{label:28s}" + "".join(f"{value:>{width}s}" for value in values))

    row("tokens updated per layer", [str(sum(v.tokens_per_layer)) for v in variants])
    if "torch" in settings.backends:
        _torch_rows(variants, settings, row)
    if any(v.onnxruntime for v in variants):
        _onnx_runtime_rows(variants, settings, row)
    lines.append("")
    lines += _summary(variants)
    return "\n".join(lines)


def _torch_rows(
    variants: list[VariantResult], settings: BenchmarkSettings, row: Callable[..., None]
) -> None:
    if variants[0].gflops:
        for stage_name in STAGES:
            row(f"GFLOPs {stage_name}", [f"{v.gflops.get(stage_name, 0.0):.2f}" for v in variants])
        row("GFLOPs total", [f"{sum(v.gflops.values()):.1f}" for v in variants])
        row("top-k elements (M)", [f"{sum(v.selection_mops.values()):.2f}" for v in variants])
        row("gathered/scattered (M)", [f"{sum(v.movement_mops.values()):.1f}" for v in variants])
    for stage_name in STAGES:
        row(f"ms {stage_name}", [f"{1e3 * v.stage_s.get(stage_name, 0.0):.1f}" for v in variants])
    row("ms end-to-end (median)", [f"{1e3 * v.median_s:.1f}" for v in variants])
    row("ms end-to-end (IQR)", [_spread(v.latency_s) for v in variants])
    row("images / s", [f"{settings.batch_size / v.median_s:.2f}" for v in variants])
    row("peak memory (MB)", [_memory(v.peak_memory_mb) for v in variants])
    if variants[0].train_step_s:
        row(
            "train step ms (median)",
            [f"{1e3 * Latency(v.train_step_s).median:.0f}" for v in variants],
        )
        row("train peak memory (MB)", [_memory(v.train_peak_memory_mb) for v in variants])


def _onnx_runtime_rows(
    variants: list[VariantResult], settings: BenchmarkSettings, row: Callable[..., None]
) -> None:
    timings = [v.onnxruntime for v in variants]
    row(
        "onnxruntime ms (median)",
        [_or_dash(t, lambda t: f"{1e3 * _median(t):.1f}") for t in timings],
    )
    row("onnxruntime ms (IQR)", [_or_dash(t, lambda t: _spread(t.latency_s)) for t in timings])
    row(
        "onnxruntime images / s",
        [_or_dash(t, lambda t: f"{settings.batch_size / _median(t):.2f}") for t in timings],
    )
    row("onnxruntime export s", [_or_dash(t, lambda t: f"{t.export_s:.0f}") for t in timings])
    row("onnxruntime file MiB", [_or_dash(t, lambda t: f"{t.file_mb:.1f}") for t in timings])


def _summary(variants: list[VariantResult]) -> list[str]:
    """One line per Focus variant: against the dense baseline, and ONNX Runtime / PyTorch."""
    dense = variants[-1]
    lines = []
    for variant in variants[:-1]:
        parts = []
        if dense.gflops:
            flops = variant.gflops.get("encoder", 0.0) / max(dense.gflops["encoder"], 1e-12)
            parts.append(f"encoder FLOPs x{flops:.3f}")
        if dense.latency_s:
            encoder_ratio = variant.stage_s.get("encoder", 0.0) / max(
                dense.stage_s["encoder"], 1e-12
            )
            parts.append(f"encoder time x{encoder_ratio:.3f}")
            parts.append(f"end-to-end time x{variant.median_s / dense.median_s:.3f}")
        if variant.train_step_s and dense.train_step_s:
            train_ratio = Latency(variant.train_step_s).median / Latency(dense.train_step_s).median
            parts.append(f"training step x{train_ratio:.3f}")
        if parts:
            lines.append(f"{variant.name} vs dense: " + ", ".join(parts))
        if variant.onnxruntime and variant.latency_s:
            ratio = _median(variant.onnxruntime) / variant.median_s
            lines.append(f"{variant.name}: onnxruntime time / torch time x{ratio:.3f}")
    return lines


def _median(timing: OnnxRuntimeTiming) -> float:
    return Latency(timing.latency_s).median


def _or_dash(timing: OnnxRuntimeTiming | None, show: Callable[[OnnxRuntimeTiming], str]) -> str:
    return "-" if timing is None else show(timing)


def _spread(runs: list[float]) -> str:
    low, high = Latency(runs).spread
    return f"{1e3 * low:.0f}-{1e3 * high:.0f}"


def _memory(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
