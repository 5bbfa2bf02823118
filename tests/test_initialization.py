"""Initialising a model from trained weights (``--init-weights``): classes mapped by name."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import focus_detr
from focus_detr.cli import main
from focus_detr.config import config_to_dict
from focus_detr.data.coco_metadata import COCO_CLASS_NAMES
from focus_detr.engine.initialization import CLASS_DEPENDENT, read_init_source
from focus_detr.engine.training_checkpoint import save_model
from focus_detr.models.build import build_model
from focus_detr.weights.checkpoint import CheckpointError
from focus_detr.weights.detrex import detrex_to_native
from tests.helpers import MANIFESTS, randomize_, tiny_config, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE_CLASSES = ["circle", "square", "triangle", "ring", "cross"]


def _class_dependent(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if CLASS_DEPENDENT.match(k)}


def test_name_matched_rows_are_copied_and_new_classes_keep_a_new_heads_values():
    source = randomize_(build_model(tiny_config(num_classes=5)), seed=3)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SOURCE_CLASSES)]
    checkpoint = {"model": source.state_dict(), "categories": categories}
    torch.manual_seed(1)
    model = build_model(tiny_config(num_classes=3))
    fresh = _class_dependent(model)
    assert len(fresh) == 2 * 2 + 2 + 1  # 2 decoder class heads, two-stage head, label table

    report = focus_detr.initialize_from(
        model, checkpoint, class_names=["Triangle", "heart", "circle"]
    )

    state, source_state = model.state_dict(), source.state_dict()
    for key, value in state.items():
        if key in fresh:
            assert torch.equal(value[0], source_state[key][2]), key  # Triangle <- triangle
            assert torch.equal(value[2], source_state[key][0]), key  # circle <- circle
            assert torch.equal(value[1], fresh[key][1]), key  # heart: as built
        else:
            assert torch.equal(value, source_state[key]), key
    assert report.copied_classes == [("Triangle", "triangle"), ("circle", "circle")]
    assert report.new_classes == ["heart"]
    assert sorted(report.class_dependent) == sorted(fresh)
    assert report.reinitialized == [] and report.absent == [] and report.unused == []
    summary = report.summary()
    assert "classes copied by name (2): Triangle (= triangle), circle" in summary
    assert "new classes (1): heart" in summary
    with pytest.raises(ValueError, match="pass class_names"):
        focus_detr.initialize_from(model, checkpoint)


def test_other_widths_are_reinitialised_and_nothing_fitting_is_an_error():
    source = randomize_(build_model(tiny_config(num_classes=5, feedforward_dim=96)), seed=4)
    torch.manual_seed(2)
    model = build_model(tiny_config(num_classes=5))
    before = model.state_dict()["encoder.layers.0.ffn.linear1.weight"].clone()
    report = focus_detr.initialize_from(model, source.state_dict())  # same classes, in order
    assert torch.equal(model.state_dict()["encoder.layers.0.ffn.linear1.weight"], before)
    assert any(k.startswith("encoder.layers.0.ffn.linear1.weight") for k in report.reinitialized)
    assert torch.equal(model.class_heads[0].weight, source.class_heads[0].weight)
    other = build_model(tiny_config(num_classes=5, embed_dim=32, num_heads=2))
    with pytest.raises(CheckpointError, match="no tensor that fits"):
        focus_detr.initialize_from(other, {"backbone.nothing": torch.zeros(1)})


@pytest.fixture(scope="module")
def detrex_release(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A detrex R-50 release zip with synthetic weights, and its state dict (native keys)."""
    from focus_detr.weights.parity import read_manifest, synthesize_state_dict

    generator = torch.Generator().manual_seed(0)
    state = synthesize_state_dict(
        read_manifest(MANIFESTS / "focus_detr_r50.json.gz"),
        make=lambda key, shape: torch.randn(shape, generator=generator),
    )
    path = tmp_path_factory.mktemp("release") / "focus_detr_r50_4scale_12ep.zip"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive,
        archive.open("focus_detr_r50_4scale_12ep/model_final.pth", "w", force_zip64=True) as out,
    ):
        torch.save({"model": state}, out)
    return path, detrex_to_native(dict(state), 6)[0]


def test_a_detrex_release_initialises_a_three_class_model(detrex_release):
    path, native = detrex_release
    model = build_model("focus_detr_r50_4scale_12ep", num_classes=3)
    fresh = _class_dependent(model)
    report = focus_detr.initialize_from(
        model, path, class_names=["person", "zebra crossing", "Dog"]
    )
    # only the class-dependent parameters are not loaded whole
    assert report.reinitialized == [] and report.absent == [] and report.unused == []
    assert sorted(report.class_dependent) == sorted(fresh) and len(fresh) == 15
    assert set(report.loaded) == set(model.state_dict()) - set(fresh)
    dog = COCO_CLASS_NAMES.index("dog")
    assert report.copied_classes == [("person", "person"), ("Dog", "dog")]
    assert report.new_classes == ["zebra crossing"]
    state = model.state_dict()
    for key in fresh:
        assert torch.equal(state[key][0], native[key][0]) and torch.equal(
            state[key][2], native[key][dog]
        )
        assert torch.equal(state[key][1], fresh[key][1])
    assert torch.equal(state["backbone.stem.conv1.weight"], native["backbone.stem.conv1.weight"])


def test_a_preset_name_means_its_release_downloaded_once(detrex_release, monkeypatch):
    from focus_detr.engine import initialization

    asked = []
    monkeypatch.setattr(
        initialization, "download", lambda url: asked.append(url) or detrex_release[0]
    )
    source = read_init_source("focus_detr_r50_4scale_12ep")
    assert asked == [focus_detr.get_preset("focus_detr_r50_4scale_12ep").weights_url]
    assert source.class_names == tuple(COCO_CLASS_NAMES) and source.config is None
    with pytest.raises(CheckpointError, match="focus_detr_tiny has no released weights"):
        read_init_source("focus_detr_tiny")


def test_train_command_fine_tunes_a_yolo_dataset_from_our_checkpoint(tmp_path, capsys, monkeypatch):
    from focus_detr.data.synthetic import SHAPES, generate_synthetic_yolo
    from focus_detr.engine.metrics_log import read_metrics

    config = tiny_recipe()  # 8 classes: the quick start's
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES.names)]
    source = randomize_(build_model(config.model), seed=5)
    weights = save_model(
        tmp_path / "quickstart.pth", source.state_dict(), config_to_dict(config), categories
    )
    data = generate_synthetic_yolo(
        tmp_path / "shapes", num_train=4, num_val=2, image_size_range=(64, 96), max_objects=3
    ).root
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "output" / "finetune"  # the default folder of a fine-tuning run
    arguments = ["train", "--data", str(data), "--init-weights", str(weights)]
    arguments += ["--device", "cpu", "--no-progress", "--workers", "0"]
    assert main([*arguments, "--max-iters", "1"]) == 0
    printed = capsys.readouterr().out
    assert "classes copied by name (3): circle, triangle, star" in printed
    assert "new classes (3): heart, arrow, hexagon" in printed
    assert "parameters re-initialised (0)" in printed
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert [c["name"] for c in final["categories"]] == [
        "circle",
        "triangle",
        "star",
        "heart",
        "arrow",
        "hexagon",
    ]
    assert final["config"]["model"]["embed_dim"] == config.model.embed_dim  # the source's
    assert main([*arguments, "--max-iters", "2", "--resume"]) == 0  # finds the run by itself
    assert "not applied again" in capsys.readouterr().out
    resumed = torch.load(out / "last.pth", weights_only=True)
    assert resumed["iteration"] == 2 and resumed["init_weights"] == str(weights)
    records = [r for r in read_metrics(out) if r["type"] == "init_weights"]
    assert len(records) == 1 and records[0]["source"] == str(weights)
    assert records[0]["new_classes"] == ["heart", "arrow", "hexagon"]
    assert json.dumps(records[0])  # plain values
