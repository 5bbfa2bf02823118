"""One optimisation step: micro-batches of one process, loss normalisation, clipping, AMP.

Every micro-batch loss is normalised with the whole step's ``num_boxes`` (boxes of the step
over all processes / world size) and ``num_images`` (images per process per step); the weighted
losses are back-propagated one micro-batch at a time (DDP synchronises on the last one). The
summed gradients, averaged over processes by DDP, are then those of one process holding the
whole batch. A NaN or infinite loss on any process skips the optimiser update everywhere.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from focus_detr.engine.distributed import all_reduce_sum
from focus_detr.engine.ema import ModelEMA
from focus_detr.losses import SetCriterion, prepare_targets
from focus_detr.structures import FocusDETROutput

MicroBatch = tuple[Any, list[dict[str, Any]]]


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive steps with a NaN or infinite loss."""


@dataclass
class StepResult:
    """Outcome of one optimisation step (values averaged over processes).

    Attributes:
        iteration: the step's index (0-based).
        losses: unweighted losses summed over the micro-batches, plus ``total_loss`` (the
            weighted sum that was minimised).
        finite: False if the step was skipped for a non-finite loss.
        grad_norm: L2 norm of all gradients before clipping (NaN when skipped).
        lr: learning rate of the step (the largest of the parameter groups).
        data_seconds: time spent waiting for the step's data.
    """

    iteration: int
    losses: dict[str, float]
    finite: bool
    grad_norm: float
    lr: float = 0.0
    data_seconds: float = 0.0


@dataclass
class OptimizationStep:
    """Runs steps of one process.

    Attributes:
        model: the model (the optimiser's parameters).
        forward_model: what is called for the forward pass (a DDP wrapper or ``model``).
        criterion: losses.
        optimizer / scheduler / scaler: updated once per step.
        device: where the batches go.
        world_size: number of processes.
        clip_grad_norm: max L2 norm of all gradients (<= 0: no clipping).
        autocast_dtype: ``torch.autocast`` dtype, or None for full precision.
        max_nonfinite_steps: raise :class:`NonFiniteLossError` after this many skipped steps
            in a row (<= 0: never).
        nonfinite_in_a_row: skipped steps since the last finite one.
        ema: moving average updated after every optimiser step (None: none).
    """

    model: nn.Module
    forward_model: nn.Module
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    world_size: int = 1
    clip_grad_norm: float = 0.1
    autocast_dtype: torch.dtype | None = None
    max_nonfinite_steps: int = 20
    nonfinite_in_a_row: int = 0
    ema: ModelEMA | None = None

    def __call__(self, micro_batches: list[MicroBatch], iteration: int) -> StepResult:
        """Forward/backward every micro-batch, then one optimiser and scheduler step.

        Args:
            micro_batches: ``(ImageBatch, raw targets)`` pairs of this process for the step;
                raw targets hold ``boxes`` (xyxy pixels) and ``labels``.
            iteration: the step's index (reported back; the scheduler counts on its own).

        Raises:
            NonFiniteLossError: after ``max_nonfinite_steps`` skipped steps in a row.
        """
        if not micro_batches:
            raise ValueError("a step needs at least one micro-batch")
        self.forward_model.train()
        num_boxes, num_images = self._normalisers(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        summed: Tensor | None = None
        names: list[str] = []
        for index, (images, raw_targets) in enumerate(micro_batches):
            with self._sync_context(is_last=index == len(micro_batches) - 1):
                values, names = self._forward_backward(images, raw_targets, num_boxes, num_images)
            summed = values if summed is None else summed + values
        assert summed is not None
        averaged = all_reduce_sum(summed) / self.world_size
        losses = dict(zip(["total_loss", *names], averaged.tolist()))
        finite = all(math.isfinite(value) for value in losses.values())
        lr = max(float(group["lr"]) for group in self.optimizer.param_groups)
        if finite:
            grad_norm = self._update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            grad_norm = math.nan
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()  # the schedule follows the data, skipped steps included
        self._count_nonfinite(finite, iteration)
        return StepResult(iteration, losses, finite, grad_norm, lr)

    def _count_nonfinite(self, finite: bool, iteration: int) -> None:
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        limit = self.max_nonfinite_steps
        if limit > 0 and self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {self.nonfinite_in_a_row} steps in a row "
                f"(up to iteration {iteration}); training stopped. Try a lower train.lr, "
                f"train.amp=none, or check the data for degenerate boxes."
            )

    def _normalisers(self, micro_batches: list[MicroBatch]) -> tuple[float, int]:
        """(boxes of the whole step / world size, at least 1; images of this process)."""
        local = sum(len(t["labels"]) for _, targets in micro_batches for t in targets)
        count = all_reduce_sum(torch.tensor([float(local)], device=self.device))
        num_boxes = max(float(count.item()) / self.world_size, 1.0)
        num_images = sum(len(targets) for _, targets in micro_batches)
        return num_boxes, num_images

    def _sync_context(self, is_last: bool) -> contextlib.AbstractContextManager[Any]:
        ddp = isinstance(self.forward_model, nn.parallel.DistributedDataParallel)
        if is_last or not ddp:
            return contextlib.nullcontext()
        return self.forward_model.no_sync()  # type: ignore[operator]

    def _forward_backward(
        self, images: Any, raw_targets: list[dict[str, Any]], num_boxes: float, num_images: int
    ) -> tuple[Tensor, list[str]]:
        """Back-propagate one micro-batch's weighted loss.

        Returns:
            ``[1 + num_losses]`` detached float32 values (weighted total first) and the loss
            names (sorted).
        """
        images = images.to(self.device)
        targets = prepare_targets(raw_targets, images.image_sizes, device=self.device)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            outputs = self.forward_model(images, targets, raw=True)
            if _all_finite(outputs):
                losses = self.criterion(
                    outputs, targets, num_boxes=num_boxes, num_images=num_images
                )
                total = self.criterion.weighted_total(losses)
            else:  # the matcher refuses NaN predictions: make the whole step NaN instead
                total = _nan_through(outputs)
                losses = dict.fromkeys(self.criterion.weight_dict, total.detach())
        self.scaler.scale(total).backward()
        names = sorted(losses)
        values = torch.stack([total.detach(), *(losses[n].detach() for n in names)]).float()
        return values, names

    def _update(self) -> float:
        """Unscale, clip, step; returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.clip_grad_norm if self.clip_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=2.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(norm)


def _supervised_outputs(outputs: FocusDETROutput) -> list[Tensor]:
    """The output tensors the criterion reads."""
    tensors = [
        outputs.logits,
        outputs.boxes,
        outputs.proposal_logits,
        outputs.proposal_boxes,
        outputs.foreground_logits,
    ]
    if outputs.denoising is not None:
        tensors += [outputs.denoising.logits, outputs.denoising.boxes]
    return tensors


def _all_finite(outputs: FocusDETROutput) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _supervised_outputs(outputs))


def _nan_through(outputs: FocusDETROutput) -> Tensor:
    """A NaN scalar connected to every supervised output (so that backward reaches the same
    parameters as the real loss, and DDP's gradient synchronisation stays in step)."""
    connected = sum(t.float().sum() for t in _supervised_outputs(outputs))
    return connected * math.nan  # type: ignore[return-value]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of ``train.amp`` (None for ``none``) on ``device``."""
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 or none on a CPU)")
        return torch.float16
    if device.type != "cuda":
        warnings.warn("bf16 autocast on a CPU is slow and only for experiments", stacklevel=3)
    return torch.bfloat16
