"""Issue 9: bad image files, malformed annotations and evaluation data that does not fit the
model are reported before anything runs, by file and entry, instead of crashing mid-run or
printing a table of zeros."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from focus_detr.cli import main
from focus_detr.data import CocoDetection
from focus_detr.data.categories import Categories
from focus_detr.engine.trainer import Trainer
from focus_detr.errors import DatasetError
from tests.helpers import make_synthetic, tiny_recipe, train_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(synthetic, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic.root, root)
    return root


def _break_three_images(folder: Path) -> list[str]:
    """A missing file, a corrupt one and one of another size than stated; their names."""
    files = sorted(folder.glob("*.png"))
    files[0].unlink()
    files[1].write_bytes(b"\x89PNG not really")
    PIL.Image.new("RGB", (31, 17)).save(files[2])
    return [f.name for f in files[:3]]


# ------------------------------------------------------------------------- 5: image files


def test_bad_images_are_all_reported_at_once_and_skipped(synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)
    names = _break_three_images(root / "train")
    annotations = root / "annotations" / "instances_train.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(root / "train", annotations)
    messages = [str(w.message) for w in caught if "cannot be used" in str(w.message)]
    assert len(messages) == 1
    assert "3 of 8 images cannot be used and are left out" in messages[0]
    assert all(name in messages[0] for name in names)
    assert "does not exist" in messages[0] and "not an image" in messages[0]
    assert "17x31 (h x w)" in messages[0]
    assert len(dataset) == 5 and {p.path.name for p in dataset.skipped_images} == set(names)
    for index in range(len(dataset)):
        dataset[index]  # every remaining image loads
    with pytest.raises(DatasetError) as error:
        CocoDetection(root / "train", annotations, bad_images="error")
    assert all(name in str(error.value) for name in names)


def test_training_with_bad_images_runs_instead_of_crashing(synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)
    _break_three_images(root / "train")
    paths = type(synthetic).under(root)
    config = tiny_recipe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = train_set(paths, config)
    trainer = Trainer(config, dataset, output_dir=tmp_path / "run", progress=False, max_iters=2)
    assert trainer.train().iterations == 2  # used to fail when the loader reached them
    assert any("3 of 8 images cannot be used" in str(w.message) for w in caught)
    resumed = Trainer(
        config, dataset, output_dir=tmp_path / "run", progress=False, max_iters=3, resume=True
    )
    assert resumed.train().iterations == 3


def test_eval_command_skips_a_missing_image_with_a_warning(trained_weights, synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)
    missing = sorted((root / "val").glob("*.png"))[0]
    missing.unlink()
    arguments = ["eval", "--weights", str(trained_weights), "--data", str(root)]
    with pytest.warns(UserWarning, match=f"(?s)1 of 6 images cannot be used.*{missing.name}"):
        assert main([*arguments, "--device", "cpu", "--workers", "0", "--no-progress"]) == 0


# ------------------------------------------------------------------ 7: annotation entries


def _write(tmp_path: Path, annotations: list, categories: list) -> Path:
    PIL.Image.new("RGB", (30, 20)).save(tmp_path / "1.png")
    path = tmp_path / "instances.json"
    image = {"id": 1, "file_name": "1.png", "height": 20, "width": 30}
    data = {"images": [image], "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("bbox", [None, "1234", [1, 2, "3", 4], [1, 2, 3], [1, 2, True, 4]])
def test_malformed_bbox_names_the_file_and_the_annotation(tmp_path, bbox):
    annotation = {"id": 77, "image_id": 1, "category_id": 1, "bbox": bbox}
    path = _write(tmp_path, [annotation], [{"id": 1, "name": "a"}])
    with pytest.raises(DatasetError, match=r"instances\.json: annotations\[0\] \(id 77\): bbox"):
        CocoDetection(tmp_path, path)


def test_category_without_id_names_the_file_and_the_category(tmp_path, capsys):
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
    path = _write(tmp_path, [annotation], [{"name": "cat"}])
    with pytest.raises(DatasetError, match=r"instances\.json: categories\[0\] \('cat'\) has no"):
        CocoDetection(tmp_path, path)
    (tmp_path / "annotations").mkdir()
    path.rename(tmp_path / "annotations" / "instances_train.json")
    (tmp_path / "train").mkdir()
    (tmp_path / "1.png").rename(tmp_path / "train" / "1.png")
    assert main(["train", "--preset", "focus_detr_tiny", "--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "categories[0] ('cat') has no 'id'" in error


# -------------------------------------------------------- 7: evaluation data vs. the model


@pytest.fixture(scope="module")
def trained_weights(synthetic, tmp_path_factory) -> Path:
    """model_final.pth of a 2-step run on the synthetic set (8 named classes)."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    config = tiny_recipe()
    dataset = train_set(synthetic, config)
    Trainer(config, dataset, output_dir=out, progress=False, max_iters=2).train()
    return out / "model_final.pth"


def _with_categories(synthetic, tmp_path: Path, rename) -> Path:
    """A copy of the validation split whose categories go through ``rename(id, name)``."""
    root = tmp_path / "renamed"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(synthetic.val_images, root / "val")
    data = json.loads(synthetic.val_annotations.read_text())
    new = {c["id"]: rename(c["id"], c["name"]) for c in data["categories"]}
    data["categories"] = [
        {"id": new[c["id"]][0], "name": new[c["id"]][1]} for c in data["categories"]
    ]
    for annotation in data["annotations"]:
        annotation["category_id"] = new[annotation["category_id"]][0]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def test_categories_are_matched_to_the_model_by_name(synthetic, tmp_path):
    from focus_detr.cli.evaluate import _dataset
    from focus_detr.data.discovery import evaluation_split

    # same names, other ids and case: COCO ids 108..101 for circle..bar
    root = _with_categories(synthetic, tmp_path, lambda i, n: (109 - i, n.upper()))
    model = Categories(names=tuple(synthetic.category_names), ids=tuple(range(1, 9)))
    dataset, label_to_id = _dataset(evaluation_split(root), model)
    assert label_to_id == [108, 107, 106, 105, 104, 103, 102, 101]
    reference = CocoDetection(synthetic.val_images, synthetic.val_annotations)
    for index in range(len(reference)):
        assert torch.equal(dataset[index][1]["labels"], reference[index][1]["labels"])


def test_eval_with_categories_the_model_does_not_know_is_an_error(
    trained_weights, synthetic, tmp_path, capsys
):
    root = _with_categories(synthetic, tmp_path, lambda i, n: (100 + i, f"thing {i}"))
    arguments = ["eval", "--weights", str(trained_weights), "--data", str(root)]
    assert main([*arguments, "--device", "cpu", "--workers", "0", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "do not match" in error and "'thing 1' (id 101)" in error and "circle" in error


def test_eval_on_an_empty_split_is_an_error(trained_weights, tmp_path, capsys):
    root = make_synthetic(tmp_path / "empty", num_train=1, num_val=0).root
    arguments = ["eval", "--weights", str(trained_weights), "--data", str(root)]
    assert main([*arguments, "--device", "cpu", "--workers", "0", "--no-progress"]) == 2
    assert "has no annotated objects" in capsys.readouterr().err


def test_match_model_categories_rules():
    from focus_detr.data.categories import match_model_categories

    names, ids = ("cat", "Dog", "bird"), (1, 2, 3)
    # by name, whatever the ids; the model's extra class gets an unused id
    assert match_model_categories(names, ids, [7, 9], ["dog", "CAT"], "f") == [9, 7, 10]
    # names differ but the ids are the model's: matched by id, with a warning
    with pytest.warns(UserWarning, match=r"by id, but .* 'x' \(id 3\) is the model's 'bird'"):
        assert match_model_categories(names, ids, [1, 3], ["dog", "x"], "f") == [1, 2, 3]
    # a category without objects needs no match
    assert match_model_categories(names, ids, [5, 6], ["bird", "fox"], "f", {5: 3}) == [7, 8, 5]
    with pytest.raises(DatasetError, match=r"'fox' \(id 6\)"):
        match_model_categories(names, ids, [5, 6], ["bird", "fox"], "f")
    assert np.array_equal(match_model_categories(names, ids, [1, 2, 3], names, "f"), ids)
