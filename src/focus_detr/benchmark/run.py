"""``focus-detr benchmark``: Focus encoder vs the dense baseline, and runtimes, in one run.

For each variant (the preset's keep ratio, any extra ``--keep-ratio``, and the dense baseline
``keep_ratio=1`` with a cascade of ones) it reports FLOPs by stage, end-to-end latency (median
and quartiles after warm-up), latency by stage, peak memory and, optionally, the time and
memory of a training step. With exported backends (``onnxruntime``, ``openvino``) the Focus
variants are also exported to ONNX and timed in those runtimes, interleaved with PyTorch
(export time and file size reported). The machine's compute limit
(:mod:`~focus_detr.benchmark.peak`) is measured in the same run: every stage's time is
compared with the time its operations would take at that rate (:mod:`.report`).
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from focus_detr.benchmark.exported import ExportedTiming, exported_runtimes
from focus_detr.benchmark.flops import count_operations
from focus_detr.benchmark.peak import PeakRate, measure_peak_rate
from focus_detr.benchmark.timing import (
    Latency,
    measure_interleaved,
    measure_latency,
    peak_memory,
    stage_latency,
)
from focus_detr.config import LossConfig
from focus_detr.losses import build_criterion, prepare_targets
from focus_detr.models.build import build_model
from focus_detr.models.detector import FocusDETR

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("torch", "onnxruntime", "openvino")


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
    measure_peak: bool = True


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
    exported: dict[str, ExportedTiming] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        """Median PyTorch latency (NaN when PyTorch was not timed)."""
        return Latency(self.latency_s).median if self.latency_s else float("nan")


@dataclass
class BenchmarkReport:
    settings: BenchmarkSettings
    machine: dict[str, str]
    variants: list[VariantResult]
    peak: PeakRate | None = None

    def to_json(self) -> str:
        variants: list[dict[str, object]] = []
        data = {
            "settings": asdict(self.settings),
            "machine": self.machine,
            "peak": asdict(self.peak) if self.peak is not None else None,
            "variants": variants,
        }
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
    peak = measure_peak_rate(device, dtype) if settings.measure_peak else None
    return BenchmarkReport(settings, _machine(device), results, peak)


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
    exported = [b for b in settings.backends if b != "torch" and not name.startswith("dense")]
    if exported and dtype != torch.float32:
        raise ValueError("exported runtimes are timed in float32 only")
    calls = {"torch": forward} if "torch" in settings.backends else {}
    with exported_runtimes(model, images, exported, device) as opened:
        calls.update({runtime: call for runtime, (_, call) in opened.items()})
        latencies = measure_interleaved(
            calls, device, warmup=settings.warmup, repeats=settings.runs
        )
        for runtime, (timing, _) in opened.items():
            timing.latency_s = latencies[runtime].runs
            result.exported[runtime] = timing
    if "torch" not in settings.backends:
        return result
    result.latency_s = latencies["torch"].runs
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
