"""Issue 9, items 4 and 10: ``predict`` keeps its results, never eats its inputs, says what
it could not do."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import focus_detr
from focus_detr.cli import main
from focus_detr.io import list_image_files
from focus_detr.predict.run import predict_files
from tests.helpers import predict_arguments, read_json_lines

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photos(synthetic, tmp_path) -> Path:
    """A folder of four small images (a copy: tests write next to it)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(synthetic.val_images.glob("*.png"))[:4]:
        shutil.copy(path, folder / path.name)
    return folder


def test_out_naming_a_file_is_refused_before_any_work(photos, tmp_path, capsys) -> None:
    out = tmp_path / "results.json"
    out.write_text("keep me")
    # the weights do not exist either: the output is checked first, before loading a model
    assert main(predict_arguments([photos], out, tmp_path / "missing.pth")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --out") and "is a file" in error and error.count("\n") == 1
    assert out.read_text() == "keep me"


def test_out_that_cannot_be_created_is_refused_before_any_work(photos, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(predict_arguments([photos], blocker / "out", tmp_path / "missing.pth")) == 2
    assert capsys.readouterr().err.startswith("error: --out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_out_is_refused_before_any_work(photos, tmp_path, capsys) -> None:
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(predict_arguments([photos], out, tmp_path / "missing.pth")) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        out.chmod(0o700)


class _InterruptedDetector:
    """The tiny model, with a Ctrl-C arriving during its third forward."""

    def __init__(self, model: focus_detr.FocusDETR) -> None:
        self.model, self.calls = model, 0
        self.config, self.device = model.config, model.device

    def __call__(self, images):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.model(images)


def test_results_are_written_as_they_come_and_kept_on_ctrl_c(
    photos, tiny_checkpoint, tmp_path
) -> None:
    model, categories = focus_detr.load_model(tiny_checkpoint)
    predictor = focus_detr.Predictor(_InterruptedDetector(model))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, categories, [str(photos)], out, threshold=0.0, progress=False)
    lines = read_json_lines(out / "predictions.jsonl")
    done = sorted(photos.glob("*.png"))[:2]
    assert [Path(line["file_name"]).name for line in lines] == [p.name for p in done]
    assert all(len(line["detections"]) > 0 for line in lines)
    results = json.loads((out / "predictions.json").read_text())
    assert {Path(r["file_name"]).name for r in results} == {p.name for p in done}
    assert len(results) == sum(len(line["detections"]) for line in lines)


def test_predict_never_writes_over_its_inputs(photos, tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(predict_arguments([photos], out, tiny_checkpoint)) == 0
    annotated = sorted((out / "annotated").iterdir())
    before = {path: path.read_bytes() for path in annotated}
    assert main(predict_arguments([out / "annotated"], out, tiny_checkpoint)) == 2
    error = capsys.readouterr().err
    assert "overwrite" in error and str(annotated[0]) in error
    assert {path: path.read_bytes() for path in annotated} == before


def test_searching_a_folder_skips_the_output_folder_inside_it(
    photos, tiny_checkpoint, capsys
) -> None:
    out = photos / "results"
    for _ in range(2):  # the second run must not take the first run's pictures as inputs
        assert main(predict_arguments([photos], out, tiny_checkpoint)) == 0
        lines = (out / "predictions.jsonl").read_text().splitlines()
        assert sorted(Path(json.loads(line)["file_name"]).name for line in lines) == sorted(
            p.name for p in photos.glob("*.png")
        )


def test_symlinked_subfolders_are_searched_once(tmp_path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "a.png").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "b.png").write_bytes(b"x")
    (root / "linked").symlink_to(real, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    found = [path.relative_to(root).as_posix() for path in list_image_files([root])]
    assert found == ["b.png", "linked/a.png"]


def test_folder_without_images_is_an_error(tiny_checkpoint, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    assert main(predict_arguments([empty], tmp_path / "out", tiny_checkpoint)) == 2
    error = capsys.readouterr().err
    assert "no images or videos" in error and str(empty) in error


def test_weights_naming_a_folder_is_a_clear_error(photos, tiny_checkpoint, tmp_path, capsys):
    assert main(predict_arguments([photos], tmp_path / "out", tiny_checkpoint.parent)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is a folder" in error and "model_final.pth" in error


def test_predictions_match_the_model(photos, tiny_checkpoint, tmp_path) -> None:
    model, categories = focus_detr.load_model(tiny_checkpoint)
    run = predict_files(
        focus_detr.Predictor(model), categories, [str(photos)], tmp_path, progress=False
    )
    assert run.num_images == 4 and not run.failed
    first = sorted(photos.glob("*.png"))[0]
    expected = focus_detr.Predictor(model)([focus_detr.io.read_image(first)])[0]
    kept = expected["scores"] >= 0.3
    results = json.loads((tmp_path / "predictions.json").read_text())
    mine = [r for r in results if Path(r["file_name"]).name == first.name]
    assert len(mine) == int(kept.sum())
    assert torch.allclose(torch.tensor([r["score"] for r in mine]), expected["scores"][kept])


def test_ctrl_c_on_the_command_line_says_where_the_results_are(
    photos, tiny_checkpoint, tmp_path, monkeypatch, capsys
) -> None:
    import focus_detr.predict.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(focus_detr.predict.run, "run_prediction", interrupted)
    assert main(predict_arguments([photos], tmp_path / "out", tiny_checkpoint)) == 130
    assert "interrupted: the results so far are in" in capsys.readouterr().err
