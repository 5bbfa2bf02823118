"""A finished run is never replaced unless asked, resuming never drops or fakes a setting, and a
killed run leaves nothing behind that the next start does not clean up."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from focus_detr.cli import main
from focus_detr.config import config_to_dict
from focus_detr.engine.metrics_log import read_metrics
from focus_detr.engine.trainer import Trainer
from tests.helpers import tiny_recipe, train_arguments, train_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**train: object):
    return tiny_recipe(**{"checkpoint_every_iters": 1, **train})


def _train(synthetic, out: Path | None, *extra: str) -> int:
    arguments = train_arguments(_config(), synthetic.root, out or Path("unused"))
    if out is None:  # the default folder, output/<preset>
        index = arguments.index("--out")
        del arguments[index : index + 2]
    return main([*arguments, "--max-iters", "1", *extra])


def test_default_output_folder_never_replaces_an_earlier_run(
    synthetic, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert _train(synthetic, None) == 0
    first = tmp_path / "output" / "focus_detr_tiny" / "model_final.pth"
    before = first.read_bytes()
    capsys.readouterr()
    assert _train(synthetic, None) == 0
    second = tmp_path / "output" / "focus_detr_tiny-2" / "model_final.pth"
    assert second.is_file() and first.read_bytes() == before
    captured = capsys.readouterr()
    assert "focus_detr_tiny-2" in captured.err + captured.out
    assert f"model written to {Path('output') / 'focus_detr_tiny-2' / 'model_final.pth'}" in (
        captured.out
    )


def test_a_named_folder_holding_a_run_is_refused_unless_overwrite(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic, out) == 0
    final = (out / "model_final.pth").read_bytes()
    metrics_before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _train(synthetic, out) == 2
    error = capsys.readouterr().err
    assert "holds a finished run" in error and "--resume" in error and "--overwrite" in error
    assert (out / "model_final.pth").read_bytes() == final
    assert (out / "metrics.jsonl").read_text() == metrics_before
    assert _train(synthetic, out, "--overwrite") == 0
    records = read_metrics(out)
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1]  # not appended


def test_resume_is_an_error_when_nothing_can_be_loaded(synthetic, tmp_path, capsys):
    empty = tmp_path / "empty"
    assert _train(synthetic, empty, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    out = tmp_path / "run"
    assert _train(synthetic, out) == 0
    for name in ("last.pth", "last_previous.pth"):
        (out / name).write_bytes(b"garbage")
    final = (out / "model_final.pth").read_bytes()
    capsys.readouterr()
    assert _train(synthetic, out, "--resume") == 2
    error = capsys.readouterr().err
    assert "no checkpoint can be read" in error and "last_previous.pth" in error
    assert (out / "model_final.pth").read_bytes() == final


def test_resume_applies_changed_settings_and_records_them(synthetic, tmp_path):
    config = _config(lr=1e-4)
    dataset = train_set(synthetic, config)
    Trainer(config, dataset, output_dir=tmp_path, progress=False, max_iters=2).train()
    changed = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=5e-4))
    trainer = Trainer(changed, dataset, output_dir=tmp_path, progress=False, resume=True)
    multiplier = trainer.schedule.multiplier(2)
    head_group = next(g for g in trainer.optimizer.param_groups if g["base_lr"] == 5e-4)
    assert head_group["lr"] == pytest.approx(5e-4 * multiplier)  # used from iteration 2 on
    trainer.train()
    stored = torch.load(tmp_path / "last.pth", weights_only=True)["config"]
    assert stored["train"]["lr"] == 5e-4  # what is recorded is what was used
    resume = [r for r in read_metrics(tmp_path) if r["type"] == "resume"]
    assert resume[0]["iteration"] == 2 and resume[0]["changed"] == ["train.lr: 0.0001 -> 0.0005"]


def test_cli_resume_keeps_the_runs_own_settings(synthetic, tmp_path):
    out = tmp_path / "run"
    assert _train(synthetic, out, "--set", "train.lr=3e-4") == 0
    # resumed without repeating --set: the run's 3e-4, not the preset's default
    arguments = ["train", "--data", str(synthetic.root), "--out", str(out), "--resume"]
    assert main([*arguments, "--device", "cpu", "--no-progress", "--max-iters", "2"]) == 0
    stored = torch.load(out / "last.pth", weights_only=True)
    assert stored["iteration"] == 2 and stored["config"]["train"]["lr"] == 3e-4
    assert stored["config"] == config_to_dict(
        dataclasses.replace(
            _config(lr=3e-4), model=dataclasses.replace(_config().model, num_classes=8)
        )
    )


def test_a_killed_run_resumes_without_leftovers_or_repeated_metrics(synthetic, tmp_path):
    config = _config(checkpoint_every_iters=2)
    dataset = train_set(synthetic, config)
    Trainer(config, dataset, output_dir=tmp_path, progress=False, max_iters=3).train()
    # as if killed after iteration 3 was logged but before its checkpoint, mid-write
    (tmp_path / "last_previous.pth").replace(tmp_path / "last.pth")
    stale = tmp_path / ".last.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    trainer = Trainer(
        config, dataset, output_dir=tmp_path, progress=False, resume=True, max_iters=4
    )
    assert trainer.iteration == 2 and not stale.exists()
    trainer.train()
    iterations = [r["iteration"] for r in read_metrics(tmp_path) if r["type"] == "train"]
    assert iterations == [1, 2, 3, 4]  # iteration 3 of the killed run is not repeated


def test_resuming_a_complete_run_changes_nothing(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic, out) == 0
    final = (out / "model_final.pth").read_bytes()
    arguments = ["train", "--data", str(synthetic.root), "--out", str(out), "--resume"]
    assert main([*arguments, "--device", "cpu", "--no-progress", "--max-iters", "1"]) == 0
    assert (out / "model_final.pth").read_bytes() == final
    assert "is complete" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1]
