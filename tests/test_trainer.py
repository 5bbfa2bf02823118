"""Optimiser groups, schedule, one training step, non-finite losses, gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_detr
from focus_detr.config import TrainConfig
from focus_detr.data.collate import build_step_dataloader
from focus_detr.engine.optim import (
    LRSchedule,
    build_optimizer,
    build_scheduler,
    iterations_for_epochs,
    parameter_specs,
)
from focus_detr.engine.trainer import NonFiniteLossError, Trainer
from tests.helpers import (
    make_synthetic,
    max_difference,
    same_size_recipe,
    tiny_config,
    tiny_recipe,
    train_set,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parameter_groups_lr_factor_norms_and_frozen():
    model = focus_detr.build_model(tiny_config(backbone_norm="bn", backbone_frozen_stages=1))
    train = TrainConfig(lr=2e-4, backbone_lr_factor=0.1, weight_decay=1e-4)
    specs = {spec.name: spec for spec in parameter_specs(model, train)}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("backbone.stem") for name in frozen)
    assert set(specs) == trainable
    norm_parameters = {
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    }
    kinds = {type(m) for m in model.modules()}
    assert {nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm} <= kinds
    for name, spec in specs.items():
        assert spec.lr == pytest.approx(2e-5 if name.startswith("backbone.") else 2e-4)
        assert spec.weight_decay == (0.0 if name in norm_parameters else 1e-4), name
    assert specs["backbone.res2.0.conv1.weight"].weight_decay == 1e-4
    assert specs["backbone.res2.0.conv1.norm.bias"].weight_decay == 0.0  # BatchNorm
    assert specs["neck.input_projections.0.norm.weight"].weight_decay == 0.0  # GroupNorm
    assert specs["neck.input_projections.0.conv.bias"].weight_decay == 1e-4
    assert specs["encoder.layers.0.ffn_norm.weight"].weight_decay == 0.0  # LayerNorm
    assert specs["encoder.layers.0.ffn_norm.weight"].lr == pytest.approx(2e-4)
    optimizer = build_optimizer(model, train)
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len(set(in_optimizer)) == len(trainable)
    for group in optimizer.param_groups:
        for name in group["names"]:
            spec = specs[name]
            assert (group["lr"], group["weight_decay"]) == (spec.lr, spec.weight_decay)
    assert optimizer.defaults["betas"] == (0.9, 0.999)


def test_schedule_from_epochs_dataset_size_and_total_batch():
    train = TrainConfig(epochs=12.0, lr_drop_epochs=(11.0,), total_batch_size=16)
    schedule = LRSchedule.from_config(train, 117266)  # COCO train2017 images with objects
    assert schedule.max_iters == math.ceil(12 * 117266 / 16) == 87950
    assert schedule.drop_iters == (80621,)  # ceil(80620.25)
    assert schedule.multiplier(80620) == 1.0
    assert schedule.multiplier(80621) == pytest.approx(0.1)
    assert schedule.multiplier(87949) == pytest.approx(0.1)
    assert iterations_for_epochs(11.0, 160, 16) == 110  # exact multiples are not rounded up


def test_schedule_warmup_and_two_drops_through_lambda_lr():
    schedule = LRSchedule(max_iters=100, drop_iters=(50, 80), warmup_iters=10, warmup_factor=0.001)
    assert schedule.multiplier(0) == pytest.approx(0.001)
    assert schedule.multiplier(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert schedule.multiplier(10) == 1.0
    assert schedule.multiplier(49) == 1.0
    assert schedule.multiplier(50) == pytest.approx(0.1)
    assert schedule.multiplier(80) == pytest.approx(0.01)
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 1e-3}])
    scheduler = build_scheduler(optimizer, schedule)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-6)
    assert seen[10] == pytest.approx(1e-3) and seen[49] == pytest.approx(1e-3)
    assert seen[50] == pytest.approx(1e-4) and seen[80] == pytest.approx(1e-5)


def _first_batches(trainer: Trainer, dataset, steps: int = 1):
    loader = build_step_dataloader(
        dataset,
        total_batch_size=trainer.train_cfg.total_batch_size,
        seed=trainer.train_cfg.seed,
        num_steps=steps,
        num_workers=0,
        grad_accumulation=trainer.train_cfg.grad_accumulation,
    )
    return list(loader)


def test_every_trainable_parameter_gets_a_gradient(synthetic, tmp_path):
    config = tiny_recipe(model={"backbone_norm": "bn", "backbone_frozen_stages": 1})
    assert config.model.num_denoising_queries > 0
    dataset = train_set(synthetic, config)
    trainer = Trainer(config, dataset, output_dir=tmp_path, progress=False)
    # The box heads' last layers start at zero (detrex init), which zeroes the gradient of the
    # layers before them; give them small values so that every gradient can be non-zero.
    generator = torch.Generator().manual_seed(0)
    model = trainer.model
    with torch.no_grad():
        for head in [*model.box_heads, model.two_stage_box_head]:
            head.layers[-1].weight.copy_(
                1e-2 * torch.randn(head.layers[-1].weight.shape, generator=generator)
            )
    result = trainer.run_step(_first_batches(trainer, dataset), 0)
    assert result.finite and result.grad_norm > 0
    assert result.losses["loss_class_dn"] > 0  # denoising ran
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
    assert missing == []


def _nan_hook(module, inputs, output):
    return output * float("nan")


def test_nonfinite_loss_skips_the_step_then_stops(synthetic, tmp_path):
    config = tiny_recipe(max_nonfinite_steps=3)
    dataset = train_set(synthetic, config)
    trainer = Trainer(config, dataset, output_dir=tmp_path, progress=False)
    batches = _first_batches(trainer, dataset, steps=4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    handle = trainer.model.class_heads[-1].register_forward_hook(_nan_hook)
    for iteration in range(2):
        result = trainer.run_step([batches[iteration]], iteration)
        assert not result.finite and math.isnan(result.losses["total_loss"])
        assert all(p.grad is None for p in trainer.model.parameters())
    assert max_difference(before, trainer.model.state_dict()) == 0.0
    assert trainer.scheduler.last_epoch == 2  # the schedule still advances
    handle.remove()
    result = trainer.run_step([batches[2]], 2)  # a finite step resets the count
    assert result.finite and trainer.nonfinite_in_a_row == 0
    assert max_difference(before, trainer.model.state_dict()) > 0
    handle = trainer.model.class_heads[-1].register_forward_hook(_nan_hook)
    for iteration in range(3, 5):
        trainer.run_step([batches[3]], iteration)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        trainer.run_step([batches[3]], 5)
    handle.remove()


@pytest.fixture(scope="module")
def square_synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("square") / "data", image_size=(80, 80))


def test_gradient_accumulation_equals_the_whole_batch(square_synthetic, tmp_path):
    after = {}
    for accumulation in (1, 2):
        # no denoising (its groups depend on the micro-batch), frozen BatchNorm, no padding
        config = same_size_recipe(
            {"num_denoising_queries": 0}, grad_accumulation=accumulation, total_batch_size=4
        )
        dataset = train_set(square_synthetic, config)
        trainer = Trainer(
            config, dataset, output_dir=tmp_path / str(accumulation), progress=False, max_iters=2
        )
        initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        result = trainer.train()
        assert result.iterations == 2 and all(step.finite for step in result.history)
        after[accumulation] = {
            name: p.detach().clone() for name, p in trainer.model.named_parameters()
        }
        assert max_difference(initial, after[accumulation]) > 1e-5  # training moved them
    # float round-off only (measured 7e-7); Adam's 1/sqrt(v) amplifies it on tiny gradients
    assert max_difference(after[1], after[2]) < 2e-6


def test_batch_not_divisible_is_an_error(synthetic, tmp_path):
    config = tiny_recipe(total_batch_size=3, grad_accumulation=2)
    with pytest.raises(ValueError, match="not divisible"):
        Trainer(config, train_set(synthetic, config), output_dir=tmp_path, progress=False)


def test_too_few_classes_is_an_error(synthetic, tmp_path):
    config = tiny_recipe(model={"num_classes": 3})
    with pytest.raises(ValueError, match="smaller than the 8 categories"):
        Trainer(config, train_set(synthetic, config), output_dir=tmp_path, progress=False)


def test_fp16_on_cpu_is_an_error(synthetic, tmp_path):
    config = tiny_recipe(amp="fp16")
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Trainer(
            config, train_set(synthetic, config), output_dir=tmp_path, progress=False, device="cpu"
        )


def test_outputs_of_a_short_run(synthetic, tmp_path: Path):
    from focus_detr.engine.metrics_log import read_metrics
    from focus_detr.predict import Predictor, load_model

    config = tiny_recipe(checkpoint_every_iters=1, log_every_iters=2)
    dataset = train_set(synthetic, config)
    result = Trainer(config, dataset, output_dir=tmp_path, progress=False, max_iters=3).train()
    assert result.max_iters == 8  # 4 epochs x 8 images / batch 4
    assert {p.name for p in tmp_path.iterdir()} >= {
        "last.pth",
        "last_previous.pth",
        "model_final.pth",
        "metrics.jsonl",
    }
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    previous = torch.load(tmp_path / "last_previous.pth", weights_only=True)
    assert (last["iteration"], previous["iteration"]) == (3, 2)
    assert (last["epoch"], last["position_in_epoch"]) == (1, 4)
    assert [c["name"] for c in last["categories"]][:2] == ["circle", "square"]
    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records if r["type"] == "train"] == [2, 3]
    first = records[0]
    assert {"lr", "epoch", "total_loss", "loss_class", "select_loss", "seconds_per_iter"} <= set(
        first
    )
    model, categories = load_model(tmp_path / "model_final.pth")
    assert categories.names[0] == "circle" and model.num_classes == 8
    # the test resize travels with the checkpoint (model config): predicting uses it
    stored = torch.load(tmp_path / "model_final.pth", weights_only=True)["config"]
    assert (stored["model"]["test_min_size"], stored["model"]["test_max_size"]) == (80, 112)
    assert model.config.test_resize() == (80, 112)
    predictor = Predictor(model)
    assert (predictor.min_size, predictor.max_size) == (80, 112)
    image = torch.zeros(3, 200, 400, dtype=torch.uint8)
    assert tuple(predictor._resize(image).shape[-2:]) == (56, 112)


def test_periodic_and_final_evaluation_are_logged(synthetic, tmp_path):
    from focus_detr.engine.metrics_log import read_metrics
    from tests.helpers import val_set

    config = tiny_recipe(eval_every_epochs=1.0)  # 2 steps per epoch
    trainer = Trainer(
        config,
        train_set(synthetic, config),
        output_dir=tmp_path,
        val_dataset=val_set(synthetic),
        progress=False,
        max_iters=3,
    )
    result = trainer.train()
    evaluations = [r for r in read_metrics(tmp_path) if r["type"] == "eval"]
    assert [r["iteration"] for r in evaluations] == [2, 3]
    assert evaluations[0]["epoch"] == 1.0 and set(evaluations[0]) >= {"AP", "AP50", "ARl"}
    assert result.evaluation is not None
    assert result.evaluation.num_images == len(val_set(synthetic))


def test_torchvision_resnet_weights_initialise_the_backbone(tmp_path):
    import torchvision

    from focus_detr.weights.backbone import load_backbone_weights

    model = focus_detr.build_model(tiny_config(backbone_width=64))
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    report = load_backbone_weights(model, tmp_path / "resnet18.pth")
    assert report.kind == "torchvision-resnet" and len(report.loaded) == 100
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert torch.equal(model.backbone.res3[0].conv2.weight, reference.layer2[0].conv2.weight)
    assert torch.equal(model.backbone.stem.conv1.norm.running_var, reference.bn1.running_var)
    narrow = focus_detr.build_model(tiny_config())  # width 8: nothing fits
    with pytest.raises(focus_detr.CheckpointError, match="no tensor that fits"):
        load_backbone_weights(narrow, tmp_path / "resnet18.pth")


def test_official_swin_weights_initialise_the_backbone(tmp_path):
    from focus_detr.weights.backbone import load_backbone_weights

    source = focus_detr.build_model(tiny_config(backbone="swin_tiny")).backbone.state_dict()
    official = {k: v for k, v in source.items() if not k.startswith("norm")}
    official["norm.weight"] = torch.ones(768)  # the classifier's norm and head are dropped
    official["head.weight"] = torch.zeros(1000, 768)
    torch.save({"model": official}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    model = focus_detr.build_model(tiny_config(backbone="swin_tiny"))
    report = load_backbone_weights(model, tmp_path / "swin_tiny_patch4_window7_224.pth")
    assert report.kind == "swin" and report.unexpected == [] and report.mismatched == []
    assert report.missing == [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    name = "layers.2.blocks.3.attn.qkv.weight"
    assert torch.equal(model.backbone.state_dict()[name], source[name])


def test_bf16_autocast_on_cpu_warns_and_trains(synthetic, tmp_path):
    config = tiny_recipe(amp="bf16")
    with pytest.warns(UserWarning, match="bf16 autocast on a CPU"):
        trainer = Trainer(
            config, train_set(synthetic, config), output_dir=tmp_path, progress=False, device="cpu"
        )
    result = trainer.run_step(_first_batches(trainer, train_set(synthetic, config)), 0)
    assert result.finite and result.grad_norm > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_steps_on_cuda(synthetic, tmp_path, amp):
    config = tiny_recipe(amp=amp)
    dataset = train_set(synthetic, config)
    trainer = Trainer(config, dataset, output_dir=tmp_path, progress=False, device="cuda")
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    for iteration, batch in enumerate(_first_batches(trainer, dataset, steps=2)):
        result = trainer.run_step([batch], iteration)
        assert result.finite
    assert next(trainer.model.parameters()).dtype == torch.float32


def test_loss_settings_reach_the_criterion(synthetic, tmp_path):
    import dataclasses

    from focus_detr.config import LossConfig

    config = dataclasses.replace(tiny_recipe(), loss=LossConfig(giou_weight=3.0, focal_alpha=0.3))
    trainer = Trainer(config, train_set(synthetic, config), output_dir=tmp_path, progress=False)
    assert trainer.criterion.weight_dict["loss_giou_enc"] == 3.0
    assert trainer.criterion.focal_alpha == 0.3 == trainer.criterion.matcher.alpha
