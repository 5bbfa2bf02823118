"""OpenVINO: conversion of the exported graph and the OpenVINO detector, on the quick-start
architecture with random weights.

One export serves the module: ``focus-detr export`` of a checkpoint to a dynamic ONNX graph
(batch, height and width; about a minute and a half on 2 cores), then ``focus-detr export
--format openvino`` of that file to an IR. OpenVINO then runs what the dynamic graph computes
from the image sizes (data-dependent ``TopK`` widths, ``Range`` / ``Slice`` ends, ``GridSample``)
at sizes the export never saw.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ov = pytest.importorskip("openvino")

import focus_detr  # noqa: E402
from focus_detr.cli import main  # noqa: E402
from focus_detr.deploy import openvino_export  # noqa: E402
from focus_detr.deploy.onnx_contract import DeploymentMetadata  # noqa: E402
from focus_detr.deploy.onnx_export import ExportReport  # noqa: E402
from focus_detr.deploy.openvino_runtime import (  # noqa: E402
    OpenVinoDetector,
    deployment_props,
    float32_budget_difference,
    read_openvino_model,
)
from focus_detr.errors import MissingDependencyError  # noqa: E402
from focus_detr.presets import get_preset  # noqa: E402
from tests.onnx_checks import (  # noqa: E402
    CLASS_NAMES,
    MIN_MATCHED,
    PRESET,
    assert_batch_gives_single_image_results,
    assert_matches_pytorch,
    assert_same_predictions,
    first_ap,
    matched_fraction,
    modules_imported_by,
    random_checkpoint,
    random_images,
)

# never seen by the export (its example images are 549x613 and 499x523); 20x31 is padded to
# the smallest canvas the graph takes (128)
UNSEEN_SIZES = [(301, 217), (150, 97), (192, 320), (20, 31), (333, 517), (400, 300), (200, 800)]


@dataclass
class Exported:
    model: focus_detr.FocusDETR
    checkpoint: Path
    onnx: Path
    ir: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    folder = tmp_path_factory.mktemp("openvino")
    model, checkpoint = random_checkpoint(folder)
    onnx_path, ir_path = folder / "tiny.onnx", folder / "tiny.xml"
    export = ["export", "--weights", str(checkpoint), "--preset", PRESET]
    assert main([*export, "--out", str(onnx_path)]) == 0
    arguments = ["export", "--weights", str(onnx_path), "--format", "openvino"]
    assert main([*arguments, "--out", str(ir_path)]) == 0
    return Exported(model, checkpoint, onnx_path, ir_path)


@pytest.fixture(scope="module")
def detector(exported) -> OpenVinoDetector:
    return OpenVinoDetector.open(exported.ir, threads=2)


def test_openvino_matches_pytorch_at_sizes_unseen_at_export(exported, detector) -> None:
    assert_matches_pytorch(exported.model, detector, UNSEEN_SIZES)


def test_a_padded_batch_gives_each_image_its_single_image_result(exported, detector) -> None:
    images = random_images([(211, 150), (97, 301), (260, 260), (340, 190)], seed=2)
    for image, in_batch in zip(images, assert_batch_gives_single_image_results(detector, images)):
        with torch.no_grad():
            expected = exported.model([image])[0]
        assert matched_fraction(expected, in_batch) >= MIN_MATCHED


def test_metadata_round_trip_through_the_ir(exported) -> None:
    model, categories = focus_detr.load_model(exported.ir)
    assert isinstance(model, OpenVinoDetector)
    assert model.capabilities.runtime == "openvino"
    assert model.config == exported.model.config
    assert categories.names == tuple(CLASS_NAMES)
    assert categories.ids == tuple(range(1, 9))
    assert model.metadata.preset == PRESET and model.metadata.static_size is None
    assert model.metadata.config.train == get_preset(PRESET).config.train
    assert model.metadata.outputs == ("boxes", "scores", "labels", "valid")
    predictor = focus_detr.Predictor(model)
    assert (predictor.min_size, predictor.max_size) == (192, 320)
    with pytest.raises(ValueError, match="fixed at export"):
        model.set_keep_ratio(0.3)


def test_openvino_runs_the_onnx_file_too(exported, detector) -> None:
    model, categories = focus_detr.load_model(exported.onnx, runtime="openvino")
    assert isinstance(model, OpenVinoDetector) and categories.names == tuple(CLASS_NAMES)
    image = random_images([(240, 180)], seed=4)
    from_onnx, from_ir = model(image)[0], detector(image)[0]
    assert torch.equal(from_onnx["labels"], from_ir["labels"])
    torch.testing.assert_close(from_onnx["scores"], from_ir["scores"], atol=1e-5, rtol=0)


def test_a_cuda_device_warns_and_runs_on_the_cpu(exported) -> None:
    with pytest.warns(UserWarning, match="CPU"):
        model = OpenVinoDetector.open(exported.ir, device="cuda")
    assert model.device == torch.device("cpu")


def test_predict_with_openvino_writes_what_pytorch_writes(exported, synthetic, tmp_path) -> None:
    for name, weights in (("torch", exported.checkpoint), ("openvino", exported.ir)):
        arguments = ["predict", str(synthetic.val_images), "--weights", str(weights)]
        options = ["--out", str(tmp_path / name), "--threshold", "0.2", "--device", "cpu"]
        assert main([*arguments, *options]) == 0
    assert_same_predictions(tmp_path / "torch", tmp_path / "openvino", threshold=0.2)


def test_eval_with_the_openvino_backend(exported, synthetic, tmp_path, capsys) -> None:
    tables = {}
    for backend, weights in (("torch", exported.checkpoint), ("openvino", exported.onnx)):
        arguments = ["eval", "--weights", str(weights), "--backend", backend]
        options = ["--data", str(synthetic.root), "--device", "cpu", "--batch-size", "3"]
        results = tmp_path / f"{backend}.json"
        options += ["--workers", "0", "--no-progress", "--results", str(results)]
        assert main([*arguments, *options]) == 0
        tables[backend] = capsys.readouterr().out
        assert results.is_file()
    assert abs(first_ap(tables["openvino"]) - first_ap(tables["torch"])) <= 0.002


def test_missing_openvino_is_a_clear_error(exported, synthetic, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"focus-detr\[openvino\]"):
        focus_detr.load_model(exported.ir)
    images = str(synthetic.val_images)
    assert main(["predict", images, "--weights", str(exported.ir), "--out", "o"]) == 2
    assert 'pip install "focus-detr[openvino]"' in capsys.readouterr().err
    arguments = ["export", "--weights", str(exported.onnx), "--format", "openvino"]
    assert main([*arguments, "--out", "unused.xml"]) == 2
    assert 'pip install "focus-detr[openvino]"' in capsys.readouterr().err


def test_a_bad_file_is_a_one_line_error(exported, synthetic, tmp_path, capsys) -> None:
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("not an IR")
    lone = tmp_path / "lone.xml"  # an IR without its .bin
    lone.write_bytes(exported.ir.read_bytes())
    not_onnx = tmp_path / "garbage.onnx"
    not_onnx.write_bytes(b"not a protobuf at all")
    for path in (garbage, lone, not_onnx):
        images = str(synthetic.val_images)
        arguments = ["predict", images, "--weights", str(path), "--out", str(tmp_path / "out")]
        assert main([*arguments, "--backend", "openvino"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1
        assert "not a usable OpenVINO IR or ONNX model" in error


def _identity_model() -> ov.Model:
    parameter = ov.opset13.parameter([1], ov.Type.f32, name="x")
    return ov.Model([ov.opset13.relu(parameter)], [parameter])


def test_an_ir_without_focus_detr_metadata_is_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign.xml"
    ov.save_model(_identity_model(), foreign)
    with pytest.raises(focus_detr.CheckpointError, match="not exported by focus-detr"):
        focus_detr.load_model(foreign)


def test_export_refuses_an_existing_ir_unless_asked(exported, tmp_path, capsys) -> None:
    earlier = tmp_path / "model.bin"
    earlier.write_bytes(b"earlier weights")
    arguments = ["export", "--weights", str(exported.onnx), "--format", "openvino"]
    assert main([*arguments, "--out", str(tmp_path / "model.xml")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert earlier.read_bytes() == b"earlier weights"
    assert main([*arguments, "--out", str(tmp_path / "model.onnx")]) == 2
    assert "must name a .xml file" in capsys.readouterr().err
    assert main([*arguments, "--out", str(tmp_path / "m.xml"), "--keep-ratio", "0.3"]) == 2
    assert "--keep-ratio cannot change it" in capsys.readouterr().err


def test_a_failed_conversion_leaves_the_earlier_files(exported, tmp_path, monkeypatch) -> None:
    """The IR is saved into a folder beside the target and renamed into place at the end."""
    graph, weights = tmp_path / "model.xml", tmp_path / "model.bin"
    graph.write_text("an earlier graph")
    weights.write_bytes(b"earlier weights")

    def half_saved(model, path, compress_to_fp16):
        Path(path).write_text("<net")  # a broken graph, no weights
        raise RuntimeError("disk full")

    monkeypatch.setattr(ov, "save_model", half_saved)
    monkeypatch.setattr(ov, "convert_model", lambda path: _identity_model())  # fast
    with pytest.raises(RuntimeError, match="disk full"):
        openvino_export.convert_onnx_to_openvino(exported.onnx, graph)
    assert graph.read_text() == "an earlier graph" and weights.read_bytes() == b"earlier weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


def test_export_a_checkpoint_to_openvino(exported, tmp_path, monkeypatch) -> None:
    """``export --format openvino`` passes the checkpoint's settings to the ONNX export (here a
    stand-in that copies the module's export) and converts its file."""
    asked = {}

    def fake_export_onnx(model, path, **options):
        asked.update(options)
        Path(path).write_bytes(exported.onnx.read_bytes())
        return ExportReport(Path(path), 0.0, 0, options["opset"], None)  # type: ignore[arg-type]

    monkeypatch.setattr(openvino_export, "export_onnx", fake_export_onnx)
    out = tmp_path / "from_checkpoint.xml"
    arguments = ["export", "--weights", str(exported.checkpoint), "--format", "openvino"]
    assert main([*arguments, "--preset", PRESET, "--out", str(out)]) == 0
    assert asked["class_names"] == tuple(CLASS_NAMES) and asked["preset"] == PRESET
    assert asked["static_size"] is None and asked["opset"] == 18
    recorded = DeploymentMetadata.from_props(deployment_props(read_openvino_model(out)), "")
    assert recorded.config.model == exported.model.config and recorded.preset == PRESET


def test_import_focus_detr_loads_no_openvino() -> None:
    code = "import focus_detr\nfocus_detr.export_openvino, focus_detr.load_model"
    assert modules_imported_by(code, ["openvino", "nncf"]) == []


def test_the_compile_settings_keep_float32(detector) -> None:
    """OpenVINO would compute in bfloat16 on CPUs with AMX, which fails the accuracy contract."""
    assert detector.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert detector.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert not detector.compiled.get_property("ENABLE_CPU_PINNING")


@pytest.mark.slow  # NNCF takes half a minute even for 4 images
def test_int8_export_runs_and_says_so(exported, synthetic, tmp_path) -> None:
    """``--int8`` quantizes with NNCF on the calibration images (here 4): a smaller IR that
    loads and detects like any other. (Its accuracy is in docs/deploy.md, on a trained model.)"""
    pytest.importorskip("nncf")
    out = tmp_path / "int8.xml"
    arguments = ["export", "--weights", str(exported.onnx), "--format", "openvino", "--int8"]
    options = ["--calibration-images", str(synthetic.val_images), "--calibration-size", "4"]
    assert main([*arguments, *options, "--out", str(out)]) == 0
    model = read_openvino_model(out)
    assert deployment_props(model)["precision"] == "int8 (NNCF, 4 calibration images)"
    assert out.with_suffix(".bin").stat().st_size < exported.ir.with_suffix(".bin").stat().st_size
    detector, categories = focus_detr.load_model(out)
    found = detector(random_images([(192, 256)], seed=6))[0]
    assert categories.names == CLASS_NAMES and found["scores"].dtype == torch.float32


def test_int8_needs_openvino_calibration_images_and_nncf(
    exported, synthetic, tmp_path, monkeypatch, capsys
) -> None:
    arguments = ["export", "--weights", str(exported.onnx), "--int8"]
    images = ["--calibration-images", str(synthetic.val_images)]
    for extra, message in (
        ([*images, "--out", str(tmp_path / "a.onnx")], "add --format openvino"),
        (["--format", "openvino", "--out", str(tmp_path / "b.xml")], "needs --calibration-images"),
    ):
        assert main([*arguments, *extra]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "nncf", None)  # import fails
    out = ["--format", "openvino", "--out", str(tmp_path / "c.xml")]
    assert main([*arguments, *images, *out]) == 2
    assert 'pip install "focus-detr[int8]"' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_float64_runs_in_float32_as_the_budget_check_predicts(tmp_path) -> None:
    """OpenVINO's CPU plugin computes the graph's float64 (the token budgets) in float32; the
    check that warns about it finds the sizes where that matters, and none for keep ratio 0.5."""
    from onnx import TensorProto, helper, save

    nodes = [
        helper.make_node("Cast", ["n"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["d", "k"], ["p"]),
        helper.make_node("Floor", ["p"], ["f"]),
        helper.make_node("Cast", ["f"], ["kept"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "budget",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("kept", TensorProto.INT64, [None])],
        [helper.make_tensor("k", TensorProto.DOUBLE, [], [0.7])],
    )
    path = tmp_path / "budget.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    compiled = ov.Core().compile_model(str(path), "CPU")
    first = float32_budget_difference(0.7, (1.0, 0.8, 0.6, 0.6, 0.4, 0.2))
    assert first == 90 and int(90 * 0.7) == 62  # float64: 62.99999999999999
    assert compiled({"n": np.array([first])})[0].tolist() == [63]  # float32: 63.0
    assert float32_budget_difference(0.5, (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)) is None
