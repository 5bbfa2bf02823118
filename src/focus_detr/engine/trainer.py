"""The training loop: one process or many (``torchrun``), resumable, with periodic evaluation.

One optimisation step takes ``total_batch_size`` images, the same ones whatever the number of
processes and gradient-accumulation steps (see :class:`focus_detr.data.collate.StepBatchSampler`).
Each process runs ``grad_accumulation`` micro-batches; every micro-batch loss is normalised by
the step's ``num_boxes`` (boxes of the whole step / world size) and ``num_images`` (images per
process per step), so that the summed micro-batch gradients, averaged over processes by DDP,
equal those of one process holding the whole batch.

Outputs in ``output_dir``: ``last.pth`` (+ ``last_previous.pth``), ``model_final.pth``,
``metrics.jsonl`` and, on request, TensorBoard files.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focus_detr.checkpoint import CheckpointError
from focus_detr.config import Config, config_from_dict, config_to_dict
from focus_detr.data.collate import build_step_dataloader, micro_batch_size
from focus_detr.engine.checkpointing import (
    FINAL_MODEL,
    TrainingParts,
    capture_rng_state,
    categories_of,
    load_backbone_weights,
    load_resume_checkpoint,
    restore_process_rng,
    save_final_model,
    save_training_checkpoint,
    seed_everything,
)
from focus_detr.engine.distributed import (
    DistributedContext,
    all_gather_objects,
    init_distributed,
    shutdown_distributed,
)
from focus_detr.engine.evaluation import CocoEvaluation
from focus_detr.engine.evaluator import evaluate
from focus_detr.engine.initialization import InitReport, initialize_from
from focus_detr.engine.metrics_log import MetricsLogger, StepLog
from focus_detr.engine.optim import (
    LRSchedule,
    build_optimizer,
    build_scheduler,
    evaluation_iterations,
)
from focus_detr.engine.step import (
    MicroBatch,
    NonFiniteLossError,
    OptimizationStep,
    StepResult,
    autocast_dtype,
)
from focus_detr.losses import build_criterion
from focus_detr.models.build import build_model

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` produced.

    Attributes:
        output_dir: the run folder.
        iterations: steps completed (the run's position, including resumed ones).
        max_iters: steps of the full schedule.
        final_model: ``model_final.pth`` (main process).
        evaluation: final COCO evaluation (None without a validation set).
        history: ``StepResult`` of every step run by this call.
    """

    output_dir: Path
    iterations: int
    max_iters: int
    final_model: Path | None
    evaluation: CocoEvaluation | None
    history: list[StepResult] = field(default_factory=list)


class Trainer:
    """Train a Focus-DETR model.

    Args:
        config: model and training recipe.
        train_dataset: training set (with training transforms), a
            :class:`~focus_detr.data.CocoDetection` or any dataset of ``(image, target)``.
        output_dir: run folder.
        val_dataset: evaluation set (no transforms needed: the test resize is applied).
        device: ``cpu``, ``cuda`` or a device (default CUDA when available).
        resume: continue from ``output_dir/last.pth`` when it exists.
        max_iters: stop after this many steps (the schedule still follows the epochs).
        backbone_weights: ImageNet weights for the backbone (torchvision ResNet or Swin file).
        init_weights: trained weights to start from (checkpoint, URL, preset name or an
            :class:`~focus_detr.engine.initialization.InitSource`): every matching tensor is
            loaded and class rows are mapped by class name (see
            :func:`~focus_detr.engine.initialization.initialize_from`); not applied when
            ``resume`` finds a checkpoint to continue from. Recorded in ``metrics.jsonl``.
        tensorboard: also write TensorBoard scalars.
        progress: show a progress bar (main process).
        find_unused_parameters: passed to ``DistributedDataParallel``.
    """

    def __init__(
        self,
        config: Config,
        train_dataset: Any,
        *,
        output_dir: str | os.PathLike[str],
        val_dataset: Any = None,
        device: str | torch.device | None = None,
        resume: bool = False,
        max_iters: int | None = None,
        backbone_weights: str | os.PathLike[str] | None = None,
        init_weights: Any = None,
        tensorboard: bool = False,
        progress: bool = True,
        find_unused_parameters: bool = False,
    ) -> None:
        self.config = config
        self.train_cfg = config.train
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.context: DistributedContext = init_distributed(device)
        self.device = self.context.device
        self.micro_batch = micro_batch_size(
            self.train_cfg.total_batch_size,
            self.context.world_size,
            self.train_cfg.grad_accumulation,
        )
        self._check_classes()
        self.autocast_dtype = autocast_dtype(self.train_cfg.amp, self.device)
        self.schedule = LRSchedule.from_config(self.train_cfg, len(train_dataset))
        self.stop_iteration = min(self.schedule.max_iters, max_iters or self.schedule.max_iters)
        self.model = self._build_model(backbone_weights)
        self.categories = categories_of(train_dataset, config.model.num_classes)
        self.iteration = 0
        self.step = self._build_step(find_unused_parameters)
        if resume:
            self._resume()
        self.init_report = self._initialize(init_weights)
        self.metrics = MetricsLogger(
            self.output_dir, enabled=self.context.is_main, tensorboard=tensorboard
        )
        if self.init_report is not None:
            self.metrics.write({"type": "init_weights", **self.init_report.as_dict()})

    # ---------------------------------------------------------------- setup

    def _check_classes(self) -> None:
        dataset_classes = getattr(self.train_dataset, "num_classes", None)
        if dataset_classes is not None and self.config.model.num_classes < dataset_classes:
            raise ValueError(
                f"model.num_classes={self.config.model.num_classes} is smaller than the "
                f"{dataset_classes} categories of the training set"
            )

    def _build_model(self, backbone_weights: str | os.PathLike[str] | None) -> nn.Module:
        seed_everything(self.train_cfg.seed)  # identical initial weights on every process
        model = build_model(self.config.model)
        if backbone_weights is not None:
            report = load_backbone_weights(model, backbone_weights)
            self.log(report.summary())
        seed_everything(self.train_cfg.seed + self.context.rank)
        return model.to(self.device).train()

    def _initialize(self, init_weights: Any) -> InitReport | None:
        """Start from trained weights, class rows mapped by the training set's class names."""
        if init_weights is None:
            return None
        if self.iteration > 0:
            self.log("continuing a run: its initial weights are not applied again")
            return None
        names = [
            c["name"] for c in categories_of(self.train_dataset, self.config.model.num_classes)
        ]
        report = initialize_from(self.model, init_weights, class_names=names)
        self.log(report.summary())
        return report

    def _build_step(self, find_unused_parameters: bool) -> OptimizationStep:
        """Optimiser, schedule, scaler, criterion and the (DDP-wrapped) forward model."""
        self.optimizer = build_optimizer(self.model, self.train_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_cfg.amp == "fp16")
        self.criterion = build_criterion(self.config.loss, self.config.model).to(self.device)
        return OptimizationStep(
            model=self.model,
            forward_model=self._wrap_ddp(find_unused_parameters),
            criterion=self.criterion,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            device=self.device,
            world_size=self.context.world_size,
            clip_grad_norm=self.train_cfg.clip_grad_norm,
            autocast_dtype=self.autocast_dtype,
            max_nonfinite_steps=self.train_cfg.max_nonfinite_steps,
        )

    def _wrap_ddp(self, find_unused_parameters: bool) -> nn.Module:
        if not self.context.is_distributed:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def _resume(self) -> None:
        """Restore model, optimiser, scheduler, scaler, position and RNG from ``last.pth``."""
        found = load_resume_checkpoint(self.output_dir)
        if found is None:
            self.log(f"no checkpoint in {self.output_dir}: starting from scratch")
            return
        path, state = found
        if config_from_dict(state["config"]).model != self.config.model:
            raise CheckpointError(
                f"{path} was written for another model configuration; use another --out"
            )
        if state.get("data") != self._data_signature():
            warnings.warn(
                f"{path}: the data set, total batch or seed changed since the checkpoint "
                f"({state.get('data')} -> {self._data_signature()}); the data order differs",
                stacklevel=2,
            )
        self._parts().load_state_dict(state)
        self.iteration = int(state["iteration"])
        self.step.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        restore_process_rng(
            state["rng"], self.context.rank, self.context.world_size, self.train_cfg.seed
        )
        self.log(f"resumed from {path} at iteration {self.iteration} (epoch {self.epoch:.2f})")

    def _parts(self) -> TrainingParts:
        return TrainingParts(self.model, self.optimizer, self.scheduler, self.scaler)

    def _data_signature(self) -> dict[str, int]:
        return {
            "num_samples": len(self.train_dataset),
            "total_batch_size": self.train_cfg.total_batch_size,
            "seed": self.train_cfg.seed,
        }

    def log(self, message: str) -> None:
        """Print on the main process without breaking the progress bar."""
        if self.context.is_main:
            from tqdm import tqdm

            tqdm.write(message)

    # ---------------------------------------------------------------- loop

    def train(self) -> TrainResult:
        """Run from the current iteration to the end (or ``max_iters``); evaluate at the end."""
        history: list[StepResult] = []
        try:
            if self.iteration < self.stop_iteration:
                history = self._loop()
            evaluation = self._evaluate() if self.val_dataset is not None else None
            final = self._write_final()
        finally:
            self.metrics.close()
        return TrainResult(
            output_dir=self.output_dir,
            iterations=self.iteration,
            max_iters=self.schedule.max_iters,
            final_model=final,
            evaluation=evaluation,
            history=history,
        )

    def close(self) -> None:
        """Leave the process group (when this trainer created it)."""
        shutdown_distributed(self.context)

    def _loop(self) -> list[StepResult]:
        from tqdm import tqdm

        start, stop = self.iteration, self.stop_iteration
        batches = self._micro_batches(start, stop)
        eval_points = set(self._evaluation_iterations())
        step_log = StepLog(self.metrics, self.train_cfg.log_every_iters, self.log)
        history: list[StepResult] = []
        bar = tqdm(
            total=stop,
            initial=start,
            desc="train",
            disable=not (self.progress and self.context.is_main),
            dynamic_ncols=True,
        )
        with bar:
            for iteration in range(start, stop):
                waited = time.perf_counter()
                micro_batches = [next(batches) for _ in range(self.train_cfg.grad_accumulation)]
                data_seconds = time.perf_counter() - waited
                result = self.run_step(micro_batches, iteration)
                result.data_seconds = data_seconds
                history.append(result)
                self.iteration = iteration + 1
                step_log.record(result, epoch=self.epoch, bar=bar, last=iteration + 1 == stop)
                if iteration + 1 in eval_points and iteration + 1 < stop:
                    self._evaluate()
                every = self.train_cfg.checkpoint_every_iters
                if every > 0 and (iteration + 1) % every == 0 and iteration + 1 < stop:
                    self.save_checkpoint()
        self.save_checkpoint()
        return history

    def _micro_batches(self, start: int, stop: int) -> Iterator[Any]:
        loader = build_step_dataloader(
            self.train_dataset,
            total_batch_size=self.train_cfg.total_batch_size,
            seed=self.train_cfg.seed,
            num_steps=stop - start,
            num_workers=self.train_cfg.num_workers,
            world_size=self.context.world_size,
            rank=self.context.rank,
            grad_accumulation=self.train_cfg.grad_accumulation,
            start_step=start,
        )
        return iter(loader)

    def _evaluation_iterations(self) -> list[int]:
        if self.val_dataset is None:
            return []
        return evaluation_iterations(
            self.train_cfg.eval_every_epochs,
            len(self.train_dataset),
            self.train_cfg.total_batch_size,
            self.schedule.max_iters,
        )

    @property
    def epoch(self) -> float:
        """Epochs completed (fractional)."""
        return self.iteration * self.train_cfg.total_batch_size / len(self.train_dataset)

    def run_step(self, micro_batches: list[MicroBatch], iteration: int) -> StepResult:
        """One optimisation step on this process's micro-batches (see :class:`OptimizationStep`).

        Raises:
            NonFiniteLossError: after ``max_nonfinite_steps`` skipped steps in a row.
        """
        return self.step(micro_batches, iteration)

    @property
    def nonfinite_in_a_row(self) -> int:
        """Consecutive skipped steps so far."""
        return self.step.nonfinite_in_a_row

    # ---------------------------------------------------------------- outputs

    def save_checkpoint(self) -> None:
        """Write ``last.pth``; every process takes part (their RNG states are gathered)."""
        rng_states = all_gather_objects(capture_rng_state())
        if not self.context.is_main:
            return
        samples_seen = self.iteration * self.train_cfg.total_batch_size
        epoch, position = divmod(samples_seen, len(self.train_dataset))
        state = {
            **self._parts().state_dict(),
            "iteration": self.iteration,
            "epoch": epoch,
            "position_in_epoch": position,
            "data": self._data_signature(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "rng": rng_states,
            "config": config_to_dict(self.config),
            "categories": self.categories,
        }
        save_training_checkpoint(self.output_dir, state)

    def _evaluate(self) -> CocoEvaluation:
        evaluation = evaluate(
            self.model,
            self.val_dataset,
            batch_size=max(self.micro_batch, 1),
            device=self.device,
            num_workers=min(self.train_cfg.num_workers, 2),
            category_ids=getattr(self.train_dataset, "category_ids", None),
            autocast_dtype=self.autocast_dtype,
            progress=self.progress,
        )
        self.metrics.write(
            {
                "type": "eval",
                "iteration": self.iteration,
                "epoch": self.epoch,
                **evaluation.as_dict(),
            }
        )
        self.log(f"iteration {self.iteration}: AP {evaluation.AP:.4f} AP50 {evaluation.AP50:.4f}")
        return evaluation

    def _write_final(self) -> Path | None:
        if not self.context.is_main:
            return None
        return save_final_model(
            self.output_dir / FINAL_MODEL, self.model, config_to_dict(self.config), self.categories
        )


def train(config: Config, train_dataset: Any, **options: Any) -> TrainResult:
    """Build a :class:`Trainer` with ``options`` and run it (see its arguments)."""
    trainer = Trainer(config, train_dataset, **options)
    try:
        return trainer.train()
    finally:
        trainer.close()
