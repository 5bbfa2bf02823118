"""``focus-detr predict`` end to end on a real photo with a release-style ``.zip``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focus_detr.cli import main
from focus_detr.weights.parity import read_manifest, synthesize_state_dict, synthesize_tensor
from tests.helpers import DATA, MANIFESTS


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory) -> Path:
    """A detrex-layout R-50 checkpoint zipped like the upstream releases."""
    manifest = read_manifest(MANIFESTS / "focus_detr_r50.json.gz")
    state = synthesize_state_dict(manifest, make=lambda k, s: synthesize_tensor(k, s).float())
    buffer = io.BytesIO()
    torch.save({"model": state, "iteration": 89999}, buffer)
    path = tmp_path_factory.mktemp("release") / "focus_detr_r50_4scale_12ep.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("focus_detr_r50_4scale_12ep/model_final.pth", buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    dog = Image.open(DATA / "dog.png").convert("RGB").resize((288, 216))
    paths = {"dog": folder / "dog.png", "jpeg": folder / "dog.jpg", "broken": folder / "broken.jpg"}
    dog.save(paths["dog"])
    dog.save(paths["jpeg"], quality=90)
    # the same pixels stored rotated, with an EXIF orientation (6) that undoes the rotation
    rotated = dog.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    paths["exif"] = folder / "sub" / "dog_exif.png"
    paths["exif"].parent.mkdir()
    rotated.save(paths["exif"], exif=exif)
    rgba = Image.open(paths["dog"]).convert("RGBA")
    rgba.putalpha(128)
    paths["rgba"] = folder / "dog_rgba.png"
    rgba.save(paths["rgba"])
    gray = np.asarray(Image.open(paths["dog"]).convert("L")).astype(np.uint16) * 257
    paths["gray16"] = folder / "dog_gray16.png"
    Image.fromarray(gray).save(paths["gray16"])
    paths["gray8"] = folder / "dog_gray8.png"
    Image.open(paths["dog"]).convert("L").save(paths["gray8"])
    paths["broken"].write_bytes(paths["jpeg"].read_bytes()[:300])
    return paths


def test_predict_end_to_end(release_zip, images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    status = main(
        [
            "predict",
            str(images["dog"].parent),
            "--preset",
            "focus_detr_r50_4scale_12ep",
            "--weights",
            str(release_zip),
            "--out",
            str(out),
            "--threshold",
            "0.0",
            "--min-size",
            "256",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1  # one unreadable file
    assert "broken.jpg" in captured.err
    assert "6 images" in captured.out and "images/s (torch, batch 1)" in captured.out
    predictions = json.loads((out / "predictions.json").read_text())
    by_file: dict[str, list[dict]] = {}
    for item in predictions:
        assert set(item) >= {"file_name", "category_id", "bbox", "score"}
        assert 1 <= item["category_id"] <= 90
        x, y, w, h = item["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        by_file.setdefault(Path(item["file_name"]).name, []).append(item)
    expected = {
        "dog.png",
        "dog.jpg",
        "dog_exif.png",
        "dog_rgba.png",
        "dog_gray16.png",
        "dog_gray8.png",
    }
    assert set(by_file) == expected
    for name, items in by_file.items():
        assert len(items) > 0, name
        assert max(i["bbox"][0] + i["bbox"][2] for i in items) <= 288 + 1e-3
        assert max(i["bbox"][1] + i["bbox"][3] for i in items) <= 216 + 1e-3
    # EXIF orientation applied: same pixels as the upright photo, so the same detections
    _assert_same_detections(by_file["dog.png"], by_file["dog_exif.png"])
    # alpha is dropped, and 16-bit grey is scaled to 8 bits, not truncated
    _assert_same_detections(by_file["dog.png"], by_file["dog_rgba.png"])
    _assert_same_detections(by_file["dog_gray8.png"], by_file["dog_gray16.png"])
    annotated = sorted(p.name for p in (out / "annotated").iterdir())
    # every input has its own output name: dog.png comes after dog.jpg, whose stem it shares
    assert annotated == sorted(["dog.jpg", "dog_1.png", *(expected - {"dog.jpg", "dog.png"})])
    drawn = np.asarray(Image.open(out / "annotated" / "dog_gray8.png"))
    original = np.asarray(Image.open(images["gray8"]).convert("RGB"))
    assert drawn.shape == original.shape == (216, 288, 3)
    assert (drawn != original).any(axis=-1).mean() > 0.01  # boxes and labels were drawn


def _assert_same_detections(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["category_id"] == y["category_id"]
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-3)
        assert abs(x["score"] - y["score"]) < 1e-5


def test_predict_requires_a_preset_for_detrex_weights(
    release_zip, images, tmp_path, capsys
) -> None:
    status = main(
        ["predict", str(images["dog"]), "--weights", str(release_zip), "--out", str(tmp_path)]
    )
    assert status == 2
    assert "--preset" in capsys.readouterr().err


def test_presets_command_lists_the_zoo(capsys) -> None:
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert "focus_detr_swin_large_384_4scale_22k_36ep" in listing and "56.3" in listing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error(images, tmp_path, capsys) -> None:
    arguments = ["predict", str(images["dog"]), "--preset", "focus_detr_tiny"]
    arguments += ["--weights", str(images["dog"]), "--out", str(tmp_path), "--device", "cuda"]
    assert main(arguments) == 2
    assert "CUDA is not available" in capsys.readouterr().err
