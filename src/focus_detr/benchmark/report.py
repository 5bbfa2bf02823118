"""The benchmark's printed tables: variants side by side, then each against the compute bound.

The compute-bound table divides each stage's operations by the machine's best dense rate
measured in the same run (:class:`~focus_detr.benchmark.peak.PeakRate`): ``bound ms`` is the
time the stage would take at that rate, ``x bound`` how far the measured time is above it.
End-to-end rows do the same for the whole forward in every runtime timed.
"""

from __future__ import annotations

from collections.abc import Callable

from focus_detr.benchmark.exported import ExportedTiming
from focus_detr.benchmark.peak import PeakRate
from focus_detr.benchmark.run import BenchmarkReport, BenchmarkSettings, VariantResult
from focus_detr.benchmark.timing import Latency
from focus_detr.models.stages import STAGES

__all__ = ["format_report"]

Row = Callable[[str, list[str]], None]


def format_report(report: BenchmarkReport) -> str:
    """A readable table: one column per variant, rows per stage; then the compute bound."""
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
    if variants[0].gflops:
        _flop_rows(variants, row)
    if "torch" in settings.backends:
        _torch_rows(variants, settings, row)
    for runtime in _exported_runtimes(variants):
        _exported_rows(runtime, variants, settings, row)
    lines.append("")
    lines += _summary(variants)
    if report.peak is not None and variants[0].gflops:
        lines += _bound_tables(report, report.peak)
    return "\n".join(lines)


def _flop_rows(variants: list[VariantResult], row: Row) -> None:
    for stage_name in STAGES:
        row(f"GFLOPs {stage_name}", [f"{v.gflops.get(stage_name, 0.0):.2f}" for v in variants])
    row("GFLOPs total", [f"{sum(v.gflops.values()):.1f}" for v in variants])
    row("top-k elements (M)", [f"{sum(v.selection_mops.values()):.2f}" for v in variants])
    row("gathered/scattered (M)", [f"{sum(v.movement_mops.values()):.1f}" for v in variants])


def _torch_rows(variants: list[VariantResult], settings: BenchmarkSettings, row: Row) -> None:
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


def _exported_runtimes(variants: list[VariantResult]) -> list[str]:
    return list(dict.fromkeys(name for v in variants for name in v.exported))


def _exported_rows(
    runtime: str, variants: list[VariantResult], settings: BenchmarkSettings, row: Row
) -> None:
    timings = [v.exported.get(runtime) for v in variants]

    def each(show: Callable[[ExportedTiming], str]) -> list[str]:
        return ["-" if t is None else show(t) for t in timings]

    row(f"{runtime} ms (median)", each(lambda t: f"{1e3 * _median(t):.1f}"))
    row(f"{runtime} ms (IQR)", each(lambda t: _spread(t.latency_s)))
    row(f"{runtime} images / s", each(lambda t: f"{settings.batch_size / _median(t):.2f}"))
    if runtime == _exported_runtimes(variants)[0]:
        row("export s / file MiB", each(lambda t: f"{t.export_s:.0f} / {t.file_mb:.0f}"))


def _summary(variants: list[VariantResult]) -> list[str]:
    """One line per Focus variant: against the dense baseline, and each runtime / PyTorch."""
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
        for runtime, timing in variant.exported.items():
            if variant.latency_s:
                ratio = _median(timing) / variant.median_s
                lines.append(f"{variant.name}: {runtime} time / torch time x{ratio:.3f}")
    return lines


def _bound_tables(report: BenchmarkReport, peak: PeakRate) -> list[str]:
    """Per variant: each stage's rate and its distance to the compute bound."""
    probes = ", ".join(f"{name} {rate:.0f}" for name, rate in peak.probes.items())
    lines = [
        "",
        f"compute bound: {peak.gflops:.1f} GFLOP/s (best of: {probes}; "
        f"{report.settings.dtype}, {report.machine['threads']} threads, this run)",
    ]
    for variant in report.variants:
        lines += ["", f"{variant.name:28s}{'GFLOPs':>9s}{'ms':>9s}{'GFLOP/s':>9s}"
                  f"{'bound ms':>10s}{'x bound':>9s}"]  # fmt: skip
        for stage_name in STAGES if variant.stage_s else ():
            gflops = variant.gflops.get(stage_name, 0.0)
            lines.append(_bound_line(stage_name, gflops, variant.stage_s.get(stage_name), peak))
        total = sum(variant.gflops.values())
        if variant.latency_s:
            lines.append(_bound_line("end to end: torch", total, variant.median_s, peak))
        for runtime, timing in variant.exported.items():
            lines.append(_bound_line(f"end to end: {runtime}", total, _median(timing), peak))
    return lines


def _bound_line(label: str, gflops: float, seconds: float | None, peak: PeakRate) -> str:
    bound_ms = 1e3 * gflops / peak.gflops
    if not seconds:
        return f"{label:28s}{gflops:9.2f}{'-':>9s}{'-':>9s}{bound_ms:10.1f}{'-':>9s}"
    achieved = gflops / seconds
    multiple = f"{1e3 * seconds / bound_ms:9.2f}" if bound_ms > 0.05 else f"{'-':>9s}"
    return f"{label:28s}{gflops:9.2f}{1e3 * seconds:9.1f}{achieved:9.1f}{bound_ms:10.1f}{multiple}"


def _median(timing: ExportedTiming) -> float:
    return Latency(timing.latency_s).median


def _spread(runs: list[float]) -> str:
    low, high = Latency(runs).spread
    return f"{1e3 * low:.0f}-{1e3 * high:.0f}"


def _memory(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
