"""Reading checkpoints: formats, URLs, zips, strictness, safety, dtype."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import focus_detr
from focus_detr.weights.checkpoint import CheckpointError, read_checkpoint
from focus_detr.weights.detrex import detrex_to_native, native_to_detrex
from focus_detr.weights.download import download
from focus_detr.weights.parity import read_manifest, synthesize_state_dict
from tests.helpers import MANIFESTS, randomize_, tiny_config


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    model = randomize_(focus_detr.build_model(tiny_config()), seed=3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _tiny_detrex(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return native_to_detrex(state, num_encoder_layers=2, num_decoder_layers=2)


def _assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype)), key


def test_detrex_layout_round_trip_matches_the_release_manifest() -> None:
    manifest = read_manifest(MANIFESTS / "focus_detr_r50.json.gz")
    detrex = synthesize_state_dict(manifest, make=lambda key, shape: torch.zeros(shape))
    native, report = detrex_to_native(detrex, num_decoder_layers=6)
    assert not report.unmapped and report.aliases_checked == 80
    back = native_to_detrex(native, num_encoder_layers=6, num_decoder_layers=6)
    assert list(sorted(back)) == sorted(e["key"] for e in manifest["entries"])


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module"])
def test_checkpoint_dict_formats(tmp_path: Path, tiny_state, wrap: str) -> None:
    detrex = _tiny_detrex(tiny_state)
    payload: object = {
        "bare": detrex,
        "model": {"model": detrex, "iteration": 5, "optimizer": {"state": {}}},
        "state_dict": {"state_dict": detrex},
        "module": {f"module.{k}": v for k, v in detrex.items()},
    }[wrap]
    path = tmp_path / "weights.pth"
    torch.save(payload, path)
    model = focus_detr.build_model(tiny_config())
    report = focus_detr.load_checkpoint(model, path)
    assert report.layout == "detrex"
    _assert_same_weights(model, tiny_state)


def test_zip_release_and_file_url_are_cached(tmp_path: Path, tiny_state, monkeypatch) -> None:
    monkeypatch.setenv("FOCUS_DETR_CACHE", str(tmp_path / "cache"))
    buffer = io.BytesIO()
    torch.save({"model": _tiny_detrex(tiny_state)}, buffer)
    archive = tmp_path / "release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("focus_detr_tiny/model_final.pth", buffer.getvalue())
        zf.writestr("focus_detr_tiny/README.txt", "weights")
    for source in (archive, archive.as_uri()):
        model = focus_detr.build_model(tiny_config())
        focus_detr.load_checkpoint(model, source)
        _assert_same_weights(model, tiny_state)
    cached = download(archive.as_uri())
    assert cached.is_file() and cached.stat().st_size == archive.stat().st_size
    assert cached.is_relative_to(tmp_path / "cache")
    archive.unlink()  # the cached copy is used from now on
    model = focus_detr.build_model(tiny_config())
    focus_detr.load_checkpoint(model, (tmp_path / "release.zip").as_uri())
    _assert_same_weights(model, tiny_state)


def test_zip_with_several_weight_files_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.pth", b"x")
        zf.writestr("b.pth", b"y")
    with pytest.raises(CheckpointError, match="exactly one weights file"):
        read_checkpoint(archive)


def test_arbitrary_pickles_are_not_executed(tmp_path: Path) -> None:
    class Sneaky:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": Sneaky()}, handle)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle|not a readable"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_strict_error_lists_keys_and_names_the_architecture() -> None:
    manifest = read_manifest(MANIFESTS / "focus_detr_swin_tiny_224.json.gz")
    swin = synthesize_state_dict(manifest, make=lambda key, shape: torch.zeros(shape))
    model = focus_detr.build_model("focus_detr_r50_4scale_12ep")
    with pytest.raises(CheckpointError) as error:
        focus_detr.load_checkpoint(model, swin)
    message = str(error.value)
    assert "Swin-T window 7" in message and "ResNet-50" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "backbone.res2.0.conv1.weight" in message


def test_wrong_number_of_classes_is_a_shape_mismatch(tiny_state) -> None:
    model = focus_detr.build_model(tiny_config(num_classes=7))
    with pytest.raises(CheckpointError, match="shape mismatches") as error:
        focus_detr.load_checkpoint(model, _tiny_detrex(tiny_state))
    assert "5 classes" in str(error.value) and "7 classes" in str(error.value)
    report = focus_detr.load_checkpoint(model, _tiny_detrex(tiny_state), strict=False)
    assert "two_stage_class_head.weight" in " ".join(report.mismatched)


def test_conflicting_aliases_are_refused(tiny_state) -> None:
    detrex = _tiny_detrex(tiny_state)
    detrex["class_embed.0.weight"] = detrex["class_embed.0.weight"] + 1.0
    with pytest.raises(CheckpointError, match="shared tensor differ"):
        focus_detr.load_checkpoint(focus_detr.build_model(tiny_config()), detrex)


def test_loading_keeps_the_model_dtype(tiny_state) -> None:
    model = focus_detr.build_model(tiny_config(), dtype=torch.float64)
    focus_detr.load_checkpoint(model, {k: v.float() for k, v in tiny_state.items()})
    assert all(p.dtype == torch.float64 for p in model.parameters())
    model16 = focus_detr.build_model(tiny_config(), dtype=torch.bfloat16)
    focus_detr.load_checkpoint(model16, tiny_state)
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters())


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_checkpoint(garbage)
    annotations = tmp_path / "instances_val.json"  # a common mix-up of --weights
    annotations.write_text('{"images": []}')
    with pytest.raises(CheckpointError, match=r"is not a PyTorch checkpoint.*starts with b'\{\"'"):
        read_checkpoint(annotations)
    truncated = tmp_path / "truncated.pth"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(3)}}, buffer)
    truncated.write_bytes(buffer.getvalue()[:100])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)
    legacy = tmp_path / "legacy.pth"  # the pre-zip torch.save format still loads
    torch.save({"model": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy).state_dict["w"], torch.ones(3))
    no_tensors = tmp_path / "empty.pth"
    torch.save({"iteration": 3}, no_tensors)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        read_checkpoint(no_tensors)
