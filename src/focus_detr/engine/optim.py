"""Optimiser and learning-rate schedule of the Focus-DETR recipe (detrex / detectron2 values).

- AdamW; backbone parameters at ``lr * backbone_lr_factor`` (detrex's ``lr_factor_func``:
  every parameter whose name contains ``backbone``); no weight decay on normalisation layers
  (detectron2's ``weight_decay_norm=0``: weights and biases of BatchNorm, GroupNorm, LayerNorm,
  InstanceNorm, LocalResponseNorm); frozen parameters left out.
- Iterations derived from epochs: ``ceil(epochs * dataset size / total batch)``; step decays
  x0.1 at each ``lr_drop_epochs`` converted the same way; optional linear warm-up from
  ``warmup_factor`` to 1 over ``warmup_iters`` (detectron2's ``WarmupParamScheduler``). The
  multiplier of optimisation step ``i`` (0-based) is :meth:`LRSchedule.multiplier` ``(i)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from focus_detr.config import TrainConfig

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class ParameterGroupSpec:
    """How one parameter is optimised.

    Attributes:
        name: qualified parameter name.
        lr: its learning rate.
        weight_decay: its weight decay.
    """

    name: str
    lr: float
    weight_decay: float


def parameter_specs(model: nn.Module, train: TrainConfig) -> list[ParameterGroupSpec]:
    """Learning rate and weight decay of every trainable parameter of ``model``.

    Shared parameters are listed once (under their first name).
    """
    specs: list[ParameterGroupSpec] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_LAYER_TYPES)
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            lr = train.lr * (train.backbone_lr_factor if "backbone" in name else 1.0)
            specs.append(ParameterGroupSpec(name, lr, 0.0 if is_norm else train.weight_decay))
    return specs


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per (lr, weight decay) pair.

    Each group records its ``base_lr`` and the ``names`` of its parameters.
    """
    parameters = dict(model.named_parameters(remove_duplicate=True))
    grouped: dict[tuple[float, float], list[str]] = {}
    for spec in parameter_specs(model, train):
        grouped.setdefault((spec.lr, spec.weight_decay), []).append(spec.name)
    if not grouped:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {
            "params": [parameters[name] for name in names],
            "lr": lr,
            "base_lr": lr,
            "weight_decay": weight_decay,
            "names": names,
        }
        for (lr, weight_decay), names in grouped.items()
    ]
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay
    )


def iterations_for_epochs(epochs: float, dataset_size: int, total_batch_size: int) -> int:
    """``ceil(epochs * dataset_size / total_batch_size)`` (at least 1 for a positive span)."""
    if dataset_size < 1:
        raise ValueError("the training set is empty")
    if total_batch_size < 1:
        raise ValueError(f"total_batch_size must be >= 1, got {total_batch_size}")
    # rounding guards against 11.0 * 117266 / 16 landing a hair above an integer
    return max(1, math.ceil(round(epochs * dataset_size / total_batch_size, 9)))


def evaluation_iterations(
    every_epochs: float, dataset_size: int, total_batch_size: int, max_iters: int
) -> list[int]:
    """Iterations after which to evaluate: every ``every_epochs`` epochs, before the end.

    ``every_epochs <= 0`` means never (the end of training is evaluated anyway).
    """
    if every_epochs <= 0:
        return []
    points: list[int] = []
    while True:
        epochs = (len(points) + 1) * every_epochs
        point = iterations_for_epochs(epochs, dataset_size, total_batch_size)
        if point >= max_iters:
            return points
        points.append(point)


@dataclass(frozen=True)
class LRSchedule:
    """Step decay with optional linear warm-up, in optimisation steps.

    Attributes:
        max_iters: optimisation steps of the whole run.
        drop_iters: steps from which the learning rate is multiplied by another ``gamma``.
        warmup_iters: length of the linear warm-up (0: none).
        warmup_factor: multiplier at step 0 of the warm-up.
        gamma: decay of each drop.
    """

    max_iters: int
    drop_iters: tuple[int, ...]
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    gamma: float = 0.1

    @classmethod
    def from_config(cls, train: TrainConfig, dataset_size: int) -> LRSchedule:
        """The schedule of ``train`` for a training set of ``dataset_size`` images."""
        convert = lambda epochs: iterations_for_epochs(epochs, dataset_size, train.total_batch_size)
        return cls(
            max_iters=convert(train.epochs),
            drop_iters=tuple(sorted(convert(e) for e in train.lr_drop_epochs)),
            warmup_iters=int(train.warmup_iters),
            warmup_factor=float(train.warmup_factor),
        )

    def multiplier(self, iteration: int) -> float:
        """Learning-rate multiplier of step ``iteration`` (0-based)."""
        value = self.gamma ** sum(1 for drop in self.drop_iters if iteration >= drop)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            value *= self.warmup_factor * (1.0 - alpha) + alpha
        return value

    def __call__(self, iteration: int) -> float:
        return self.multiplier(iteration)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule, start_iteration: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``schedule`` from optimisation step ``start_iteration`` (a
    resumed run's position); call ``step()`` once per optimisation step.

    The groups' learning rates become ``base_lr * schedule(start_iteration)``.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = group.get("base_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule.multiplier, last_epoch=start_iteration - 1
    )
