"""Weight EMA (hand computation, exact resume), the best checkpoint and early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from focus_detr.engine import trainer as trainer_module
from focus_detr.engine.coco_metrics import STAT_NAMES, CocoEvaluation
from focus_detr.engine.ema import ModelEMA
from focus_detr.engine.metrics_log import read_metrics
from focus_detr.engine.trainer import Trainer
from tests.helpers import max_difference, tiny_recipe, train_set, val_set

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ema_after_k_updates_equals_the_hand_computation() -> None:
    model = nn.Linear(3, 2)
    model.register_buffer("counter", torch.tensor(0))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = torch.ones(2, 3)
    for update, value in enumerate((2.0, -1.0, 4.0), start=1):
        with torch.no_grad():
            model.weight.fill_(value)
            model.counter += 1
        ema.update(model)
        weight = 0.9 * (1 - math.exp(-update / 2.0))
        expected = weight * expected + (1 - weight) * value
    torch.testing.assert_close(ema.module.weight, expected, rtol=0, atol=1e-6)
    assert int(ema.module.counter) == 3 and ema.updates == 3  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def _ema_recipe(**train: object):
    return tiny_recipe(**{"ema": True, "ema_tau": 2.0, "checkpoint_every_iters": 2, **train})


def test_ema_is_restored_exactly_on_resume(synthetic, tmp_path):
    config = _ema_recipe()
    dataset = train_set(synthetic, config)
    whole = Trainer(config, dataset, output_dir=tmp_path / "whole", progress=False, max_iters=4)
    whole.train()
    Trainer(config, dataset, output_dir=tmp_path / "split", progress=False, max_iters=2).train()
    resumed = Trainer(
        config, dataset, output_dir=tmp_path / "split", progress=False, resume=True, max_iters=4
    )
    assert resumed.ema is not None and resumed.ema.updates == 2
    resumed.train()
    assert whole.ema is not None and resumed.ema.updates == whole.ema.updates == 4
    assert max_difference(resumed.ema.module.state_dict(), whole.ema.module.state_dict()) == 0
    final = torch.load(tmp_path / "split" / "model_final.pth", weights_only=True)
    # the EMA is the model to use; the raw weights are kept beside it
    assert final["ema"] is True
    assert max_difference(final["model"], whole.ema.module.state_dict()) == 0
    assert max_difference(final["raw_model"], whole.model.state_dict()) == 0
    assert max_difference(final["model"], final["raw_model"]) > 0


def _scripted_evaluate(aps: list[float]):
    """Stand-in for ``evaluate``: the next AP of ``aps`` for each call."""
    remaining = list(aps)

    def evaluate(model, dataset, **options):
        ap = remaining.pop(0)
        stats = dict.fromkeys(STAT_NAMES, 0.0) | {"AP": ap}
        return CocoEvaluation(**stats, num_images=len(dataset), num_detections=0)

    return evaluate


def test_best_checkpoint_and_early_stopping(synthetic, tmp_path, monkeypatch):
    # one epoch = 2 steps; an evaluation every epoch: iterations 2, 4, 6, ...
    config = tiny_recipe(eval_every_epochs=1.0, epochs=10.0, lr_drop_epochs=(9.0,), patience=2)
    aps = [0.10, 0.30, 0.25, 0.30, 0.99]  # no improvement at 6 and 8 (a tie is none)
    monkeypatch.setattr(trainer_module, "evaluate", _scripted_evaluate(aps))
    trainer = Trainer(
        config,
        train_set(synthetic, config),
        val_dataset=val_set(synthetic),
        output_dir=tmp_path,
        progress=False,
    )
    result = trainer.train()
    assert result.stopped_early and result.iterations == 8 < result.max_iters
    evaluations = [r for r in read_metrics(tmp_path) if r["type"] == "eval"]
    assert [(r["iteration"], r["AP"]) for r in evaluations] == [
        (2, 0.10),
        (4, 0.30),
        (6, 0.25),
        (8, 0.30),
    ]  # the final evaluation reuses iteration 8's
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert (best["iteration"], best["ap"]) == (4, 0.30)
    assert result.best_model == tmp_path / "model_best.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 8
    assert max_difference(best["model"], final["model"]) > 0  # the weights of iteration 4


def test_patience_survives_a_resume(synthetic, tmp_path, monkeypatch):
    config = tiny_recipe(
        eval_every_epochs=1.0, epochs=10.0, lr_drop_epochs=(9.0,), patience=2,
        checkpoint_every_iters=2,
    )  # fmt: skip
    dataset = train_set(synthetic, config)
    monkeypatch.setattr(trainer_module, "evaluate", _scripted_evaluate([0.3, 0.2, 0.0]))
    options = {"val_dataset": val_set(synthetic), "output_dir": tmp_path, "progress": False}
    Trainer(config, dataset, max_iters=5, **options).train()  # evaluations at 2, 4 (+ final 5)
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert state["best"] == {"ap": 0.3, "iteration": 2, "evaluations_since": 2}
    monkeypatch.setattr(trainer_module, "evaluate", _scripted_evaluate([0.1, 0.1]))
    result = Trainer(config, dataset, resume=True, **options).train()
    assert result.stopped_early and result.iterations == 6  # one more evaluation without gain
