"""ONNX export and the ONNX Runtime detector, on the quick-start model with random weights.

One export serves the module: ``focus-detr export --static 320x320`` (the quick-start recipe
resizes to at most 320 pixels), which takes about half a minute. The dynamic-size export,
whose tracing alone takes minutes, and the zoo presets are in ``test_onnx_zoo.py`` (slow).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import focus_detr  # noqa: E402
from focus_detr.cli import main  # noqa: E402
from focus_detr.deploy.onnx_runtime import OnnxRuntimeDetector  # noqa: E402
from focus_detr.errors import MissingDependencyError  # noqa: E402
from focus_detr.models.focus_encoder import layer_width_bounds, token_budgets  # noqa: E402
from focus_detr.presets import get_preset  # noqa: E402
from tests.onnx_checks import (  # noqa: E402
    CLASS_NAMES,
    PRESET,
    assert_batch_gives_single_image_results,
    assert_matches_pytorch,
    assert_same_predictions,
    first_ap,
    modules_imported_by,
    random_checkpoint,
    random_images,
)

CANVAS = (320, 320)
# never seen by the export (its example images are 320x320 and 270x230)
UNSEEN_SIZES = [(301, 217), (150, 97), (192, 320), (20, 31)]


@dataclass
class Exported:
    model: focus_detr.FocusDETR
    checkpoint: Path
    onnx: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    folder = tmp_path_factory.mktemp("onnx")
    model, checkpoint = random_checkpoint(folder)
    onnx_path = folder / "tiny.onnx"
    arguments = ["export", "--weights", str(checkpoint), "--preset", PRESET]
    static = "x".join(map(str, CANVAS))
    assert main([*arguments, "--out", str(onnx_path), "--static", static]) == 0
    return Exported(model, checkpoint, onnx_path)


@pytest.fixture(scope="module")
def detector(exported) -> OnnxRuntimeDetector:
    return OnnxRuntimeDetector.open(exported.onnx)


def test_onnx_runtime_matches_pytorch_at_sizes_unseen_at_export(exported, detector) -> None:
    assert_matches_pytorch(exported.model, detector, UNSEEN_SIZES)


def test_a_batch_gives_each_image_its_single_image_result(detector) -> None:
    assert_batch_gives_single_image_results(
        detector, random_images([(211, 150), (97, 301), (260, 260)], seed=2)
    )


def test_metadata_round_trip_makes_the_preset_unnecessary(exported) -> None:
    model, categories = focus_detr.load_model(exported.onnx)
    assert isinstance(model, OnnxRuntimeDetector)
    assert model.config == exported.model.config
    assert categories.names == tuple(CLASS_NAMES)
    assert categories.ids == tuple(range(1, 9))
    assert model.metadata.static_size == CANVAS and model.metadata.preset == PRESET
    assert model.metadata.input_min_side == 128
    assert model.metadata.config.train == get_preset(PRESET).config.train
    assert model.metadata.outputs == ("boxes", "scores", "labels", "valid")
    assert not isinstance(model, torch.nn.Module) and model.device == torch.device("cpu")
    predictor = focus_detr.Predictor(model)
    assert (predictor.min_size, predictor.max_size) == (192, 320)


def test_the_keep_ratio_is_fixed_at_export(exported) -> None:
    with pytest.raises(focus_detr.CheckpointError, match="fixed at export"):
        focus_detr.load_model(exported.onnx, keep_ratio=0.3)
    with pytest.raises(focus_detr.CheckpointError, match="preset"):
        focus_detr.load_model(exported.onnx, preset="focus_detr_r50_4scale_12ep")


def test_predict_with_onnx_writes_what_pytorch_writes(exported, synthetic, tmp_path) -> None:
    for name, weights in (("torch", exported.checkpoint), ("onnx", exported.onnx)):
        arguments = ["predict", str(synthetic.val_images), "--weights", str(weights)]
        options = ["--out", str(tmp_path / name), "--threshold", "0.2", "--device", "cpu"]
        assert main([*arguments, *options]) == 0
    assert_same_predictions(tmp_path / "torch", tmp_path / "onnx", threshold=0.2)


def test_eval_with_onnx_gives_the_pytorch_numbers(exported, synthetic, tmp_path, capsys) -> None:
    tables = {}
    for name, weights in (("torch", exported.checkpoint), ("onnx", exported.onnx)):
        results = tmp_path / f"{name}.json"
        arguments = ["eval", "--weights", str(weights), "--data", str(synthetic.root)]
        options = ["--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "3"]
        assert main([*arguments, *options, "--results", str(results)]) == 0
        tables[name] = capsys.readouterr().out
        assert results.is_file()
    torch_ap = first_ap(tables["torch"])
    assert abs(first_ap(tables["onnx"]) - torch_ap) <= 0.002


def test_a_bad_onnx_file_is_a_one_line_error(synthetic, tmp_path, capsys) -> None:
    import onnx
    from onnx import TensorProto, helper

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), foreign)
    for path, message in ((garbage, "not a usable ONNX model"), (foreign, "not exported by")):
        images = str(synthetic.val_images)
        arguments = ["predict", images, "--weights", str(path), "--out", str(tmp_path / "out")]
        assert main(arguments) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_missing_onnxruntime_is_a_clear_error(exported, synthetic, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"focus-detr\[onnx\]"):
        focus_detr.load_model(exported.onnx)
    images = str(synthetic.val_images)
    assert main(["predict", images, "--weights", str(exported.onnx), "--out", "o"]) == 2
    assert 'pip install "focus-detr[onnx]"' in capsys.readouterr().err


def test_images_must_be_uint8_and_fit_a_static_canvas(detector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector([torch.rand(3, 50, 60)])
    with pytest.raises(ValueError, match="static"):
        detector(random_images([(321, 100)]))


def test_import_focus_detr_loads_neither_onnx_nor_onnxruntime() -> None:
    code = "import focus_detr\nfocus_detr.export_onnx, focus_detr.load_model"
    assert modules_imported_by(code, ["onnx", "onnxruntime", "onnxscript"]) == []


@pytest.mark.parametrize("keep_ratio", [0.5, 0.3, 0.7, 1.0, 0.123456789, 0.2 + 0.1])
@pytest.mark.parametrize("cascade", [(1.0, 0.8, 0.6, 0.6, 0.4, 0.2), (0.9, 0.7, 0.33)])
def test_static_gather_widths_bound_every_budget(keep_ratio, cascade) -> None:
    """The constant widths of a static export hold every image's budget, and for the usual
    ratios equal the budget of an image that fills the canvas."""
    counts = torch.arange(1, 200_001)
    budgets = token_budgets(counts, keep_ratio, cascade)
    for count in [*range(1, 2000), *range(2000, 200_001, 997)]:
        bounds = layer_width_bounds(count, keep_ratio, cascade)
        assert all(b >= int(x) for b, x in zip(bounds, budgets[count - 1])), count
    if keep_ratio in (0.5, 0.3, 1.0) and cascade[0] == 1.0:
        exact = [layer_width_bounds(int(c), keep_ratio, cascade) for c in counts[:3000]]
        assert torch.equal(torch.tensor(exact), budgets[:3000])


def test_focus_maps_ask_for_the_pytorch_checkpoint(exported, detector, synthetic, capsys) -> None:
    images = str(synthetic.val_images)
    arguments = ["predict", images, "--weights", str(exported.onnx), "--focus-maps"]
    assert main([*arguments, "--out", "unused"]) == 2
    assert "--focus-maps needs the PyTorch checkpoint" in capsys.readouterr().err
    assert not Path("unused").exists()
    with pytest.raises(TypeError, match="PyTorch FocusDETR"):
        focus_detr.compute_focus_maps(detector, random_images([(100, 120)]))


def test_export_refuses_an_existing_file_unless_asked(exported, tmp_path, capsys) -> None:
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")
    arguments = ["export", "--weights", str(exported.checkpoint), "--out", str(earlier)]
    assert main(arguments) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert earlier.read_bytes() == b"an earlier export"


def test_a_failed_export_leaves_the_earlier_file(exported, tmp_path, monkeypatch) -> None:
    """The file is written beside the target, checked, then renamed over it."""

    class BrokenProgram:
        model = type("Model", (), {"metadata_props": {}})()

        def save(self, path: str, external_data: bool) -> None:
            Path(path).write_bytes(b"half an ONNX file")

    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: BrokenProgram())
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")
    import onnx

    with pytest.raises(onnx.checker.ValidationError):
        focus_detr.export_onnx(exported.model, earlier)
    assert earlier.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
