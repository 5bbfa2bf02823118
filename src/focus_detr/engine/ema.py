"""Exponential moving average (EMA) of the model weights, with a warm-up of the decay.

After update ``n`` (1-based) every floating-point parameter and buffer ``e`` of the average
becomes ``d_n * e + (1 - d_n) * w`` with ``d_n = decay * (1 - exp(-n / tau))`` (YOLOv5 /
rf-detr's ramp: early updates follow the weights closely, later ones average over about
``1 / (1 - decay)`` steps); integer buffers are copied. ``tau <= 0`` keeps ``d_n = decay``.
The average starts from the model's weights when it is made.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """A moving average of ``model`` (a separate copy in eval mode, never trained).

    Args:
        model: the model being trained (its current weights start the average).
        decay: the decay ``d`` once warmed up, in [0, 1).
        tau: warm-up length of the decay, in updates (<= 0: no warm-up).
    """

    def __init__(self, model: nn.Module, decay: float, tau: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """``d_n`` of update ``n`` (1-based)."""
        if self.tau <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-update / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (once per optimisation step)."""
        self.updates += 1
        weight = self.decay_at(self.updates)
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(weight).add_(value.to(average.dtype), alpha=1.0 - weight)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
