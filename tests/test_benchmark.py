"""The operation counter and the benchmark command."""

from __future__ import annotations

import json
from typing import ClassVar

import torch
from torch import nn

import focus_detr
from focus_detr.benchmark.flops import count_operations
from focus_detr.cli import main
from focus_detr.models.stages import stage
from focus_detr.ops.deformable_attention_torch import deformable_attention_gather
from tests.helpers import tiny_config


def test_counter_conventions_on_known_ops() -> None:
    linear = nn.Linear(10, 20)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    norm = nn.LayerNorm(20)

    def run() -> None:
        with stage("backbone"):
            conv(torch.randn(2, 3, 5, 5))
        with stage("encoder"):
            norm(linear(torch.randn(3, 10)))

    counts = count_operations(run)
    assert counts.flops["backbone"] == 2 * 8 * 5 * 5 * 3 * 9  # one multiply-add = 1 FLOP
    assert counts.flops["encoder"] == 3 * 10 * 20 + 5 * 3 * 20  # linear + layer norm


def test_attention_and_row_writes_are_counted_on_cpu() -> None:
    """PyTorch's FLOP registry lists the CUDA attention kernels but not the CPU one."""
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 6)
    memory, rows = torch.zeros(10, 3), torch.randn(4, 3)
    index = torch.tensor([1, 4, 7, 9])

    def run() -> None:
        with stage("decoder"):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
        with stage("encoder"):
            memory.index_copy_(0, index, rows)

    counts = count_operations(run)
    assert counts.flops["decoder"] == 2 * 4 * 9 * 5 * (8 + 6)  # q k^T, then weights v
    assert counts.movement["encoder"] == 4 * 3


def test_deformable_sampling_counts_four_per_channel_and_point() -> None:
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    batch, queries, heads, levels, points, dim = 1, 7, 2, 2, 3, 8
    value = torch.randn(batch, 20, heads, dim)
    locations = torch.rand(batch, queries, heads, levels, points, 2)
    weights = torch.rand(batch, queries, heads, levels, points)
    counts = count_operations(
        lambda: deformable_attention_gather(value, shapes, starts, locations, weights)
    )
    assert counts.total() == 4 * batch * queries * heads * levels * points * dim


def test_focus_encoder_costs_less_than_dense_in_proportion() -> None:
    model = focus_detr.build_model(tiny_config(num_encoder_layers=2, cascade=(1.0, 0.5))).eval()
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    focus = count_operations(lambda: model([image]))
    model.set_keep_ratio(1.0, (1.0, 1.0))
    dense = count_operations(lambda: model([image]))
    for name in ("backbone", "neck", "foreground_scoring", "query_selection", "decoder"):
        assert focus.flops[name] == dense.flops[name], name
    ratio = focus.flops["encoder"] / dense.flops["encoder"]
    # 0.5 x (1.0 + 0.5) / 2 = 0.375 of the token-wise work; value projections stay dense
    assert 0.37 < ratio < 0.5
    assert dense.movement["encoder"] > focus.movement["encoder"] > 0
    assert focus.selection["encoder"] > 0


def test_benchmark_command_compares_focus_and_dense(tmp_path, capfd) -> None:
    out = tmp_path / "bench.json"
    status = main(
        [
            "benchmark",
            "--preset",
            "focus_detr_tiny",
            "--size",
            "96x128",
            "--keep-ratio",
            "0.5",
            "0.3",
            "--runs",
            "2",
            "--batch-size",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--train-step",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    captured = capfd.readouterr()  # file-descriptor level: native libraries print there
    table = captured.out
    assert "dense" in table and "GFLOPs encoder" in table and "ms end-to-end" in table
    assert "profiler_start" not in captured.err and "gpuGetDeviceCount" not in captured.err
    report = json.loads(out.read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["focus rho=0.5", "focus rho=0.3", "dense"]
    encoder = [v["gflops"]["encoder"] for v in report["variants"]]
    assert encoder[1] < encoder[0] < encoder[2]
    tokens = [sum(v["tokens_per_layer"]) for v in report["variants"]]
    assert tokens[1] < tokens[0] < tokens[2]
    for variant in report["variants"]:
        assert len(variant["latency_s"]) == 2 and variant["median_s"] > 0
        assert set(variant["stage_s"]) >= {"backbone", "encoder", "decoder", "postprocess"}
        assert len(variant["train_step_s"]) >= 1


def test_cpu_peak_memory_tracks_live_tensors() -> None:
    from focus_detr.benchmark.timing import peak_memory

    def allocate() -> None:
        first = torch.ones(4 * 2**20)  # 16 MiB
        second = torch.ones(2 * 2**20)  # 8 MiB, both alive
        del first, second
        torch.ones(2**20)  # 4 MiB after both were freed

    peak = peak_memory(allocate, torch.device("cpu"))
    assert 24 * 2**20 <= peak < 26 * 2**20
    assert peak_memory(allocate, torch.device("cpu")) == peak


class _EchoDetector:
    """A stand-in runtime: 'opens' any file and detects nothing."""

    opened: ClassVar[list[str]] = []

    @classmethod
    def open(cls, path, *, device, threads):
        cls.opened.append(str(path))
        return cls()

    def __call__(self, images):
        return [{} for _ in images]


def test_benchmark_times_exported_runtimes_beside_torch_against_the_bound(
    tmp_path, monkeypatch, capfd
) -> None:
    import sys
    import types

    from focus_detr.deploy import onnx_export
    from focus_detr.predict.detector import RUNTIMES, Runtime
    from focus_detr.structures import Capabilities

    def fake_export(model, path, **kwargs):
        path.write_bytes(b"graph")
        return types.SimpleNamespace(path=path, seconds=1.5, size_bytes=2**20)

    module = types.ModuleType("echo_runtime")
    module.EchoDetector = _EchoDetector
    monkeypatch.setitem(sys.modules, "echo_runtime", module)
    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    for name in ("onnxruntime", "openvino"):  # both exported rows, without either package
        monkeypatch.setitem(
            RUNTIMES, name, Runtime(name, (), Capabilities(name), "echo_runtime:EchoDetector")
        )
    out = tmp_path / "bench.json"
    arguments = ["benchmark", "--preset", "focus_detr_tiny", "--size", "96x128", "--runs", "2"]
    arguments += ["--warmup", "0", "--device", "cpu", "--backend", "torch", "onnxruntime"]
    assert main([*arguments, "openvino", "--json", str(out)]) == 0
    table = capfd.readouterr().out
    assert len(_EchoDetector.opened) == 2  # the Focus variant only, one file for both
    assert "onnxruntime ms (median)" in table and "openvino ms (median)" in table
    assert "compute bound:" in table and "end to end: openvino" in table
    report = json.loads(out.read_text())
    assert report["peak"]["gflops"] > 0 and report["peak"]["best"] in report["peak"]["probes"]
    focus, dense = report["variants"]
    assert set(focus["exported"]) == {"onnxruntime", "openvino"} and not dense["exported"]
    for timing in focus["exported"].values():
        assert len(timing["latency_s"]) == 2 and timing["export_s"] == 1.5
