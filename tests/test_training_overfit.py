"""A tiny model overfits four synthetic images: the loss falls by >90% and their AP is >0.9."""

from __future__ import annotations

from focus_detr.data.coco import CocoDetection
from focus_detr.data.transforms import build_test_transforms
from focus_detr.engine.evaluator import evaluate
from focus_detr.engine.trainer import Trainer
from tests.helpers import make_synthetic, tiny_recipe

STEPS = 250  # loss ratio 0.06 and AP 1.0 when measured


def test_tiny_model_overfits_four_images(tmp_path, one_thread):
    synthetic = make_synthetic(tmp_path / "data", num_train=4, num_val=1, image_size=(96, 96))
    config = tiny_recipe(
        model={
            "backbone_norm": "bn",
            "backbone_frozen_stages": 0,
            "test_min_size": 96,
            "test_max_size": 96,
        },
        epochs=float(STEPS),  # one step per epoch: the 4 images form one batch
        lr_drop_epochs=(float(STEPS * 4 // 5),),
        lr=1e-3,
        backbone_lr_factor=1.0,
        clip_grad_norm=1.0,
        warmup_iters=10,
        log_every_iters=50,
        checkpoint_every_iters=0,
    )
    # the same four images every step (no augmentation): memorise them
    images = CocoDetection(
        synthetic.train_images, synthetic.train_annotations, build_test_transforms(96, 96)
    )
    trainer = Trainer(config, images, output_dir=tmp_path / "run", progress=False)
    result = trainer.train()
    losses = [step.losses["total_loss"] for step in result.history]
    assert len(losses) == STEPS and all(step.finite for step in result.history)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.1 * first, f"loss {first:.2f} -> {last:.2f}"
    on_train = CocoDetection(synthetic.train_images, synthetic.train_annotations)
    evaluation = evaluate(trainer.model, on_train, batch_size=4)
    assert evaluation.AP > 0.9, evaluation.format_table()
