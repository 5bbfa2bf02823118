"""The training loop: one process or many (``torchrun``), resumable, with periodic evaluation.

One optimisation step takes ``total_batch_size`` images, the same ones whatever the number of
processes and gradient-accumulation steps (see :class:`focus_detr.data.collate.StepBatchSampler`).
Each process runs ``grad_accumulation`` micro-batches; every micro-batch loss is normalised by
the step's ``num_boxes`` (boxes of the whole step / world size) and ``num_images`` (images per
process per step), so that the summed micro-batch gradients, averaged over processes by DDP,
equal those of one process holding the whole batch.

Outputs in ``output_dir`` (see :mod:`focus_detr.engine.run_folder`, which also protects earlier
runs): ``last.pth`` (+ ``last_previous.pth``), ``model_final.pth``, ``model_best.pth`` (with a
validation set), ``metrics.jsonl`` and, on request, TensorBoard files.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focus_detr.config import Config, config_from_dict, config_to_dict
from focus_detr.data.collate import build_step_dataloader, micro_batch_size
from focus_detr.engine.coco_metrics import CocoEvaluation
from focus_detr.engine.distributed import (
    DistributedContext,
    all_gather_objects,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from focus_detr.engine.ema import ModelEMA
from focus_detr.engine.evaluator import evaluate
from focus_detr.engine.initialization import InitReport, initialize_from
from focus_detr.engine.metrics_log import MetricsLogger, StepLog, truncate_metrics
from focus_detr.engine.model_selection import BestSoFar
from focus_detr.engine.optim import (
    LRSchedule,
    build_optimizer,
    build_scheduler,
    evaluation_iterations,
)
from focus_detr.engine.resume import restore_optimizer_state, setting_changes
from focus_detr.engine.run_folder import (
    BEST_MODEL,
    FINAL_MODEL,
    choose_run_folder,
    remove_stale_temporaries,
)
from focus_detr.engine.step import (
    MicroBatch,
    NonFiniteLossError,
    OptimizationStep,
    StepResult,
    autocast_dtype,
)
from focus_detr.engine.training_checkpoint import (
    capture_rng_state,
    categories_of,
    load_resume_checkpoint,
    restore_process_rng,
    save_model,
    save_training_checkpoint,
    seed_everything,
)
from focus_detr.losses import build_criterion
from focus_detr.models.build import build_model
from focus_detr.weights.backbone import load_backbone_weights
from focus_detr.weights.checkpoint import CheckpointError

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` produced.

    Attributes:
        output_dir: the run folder.
        iterations: steps completed (the run's position, including resumed ones).
        max_iters: steps of the full schedule.
        final_model: ``model_final.pth`` (main process; None on the others).
        evaluation: final COCO evaluation of the final weights (the EMA when ``train.ema``;
            None without a validation set).
        raw_evaluation: with EMA, the final evaluation of the raw weights.
        best_model: ``model_best.pth`` (None without a validation set).
        stopped_early: training stopped for lack of improvement (``train.patience``).
        history: ``StepResult`` of every step run by this call.
    """

    output_dir: Path
    iterations: int
    max_iters: int
    final_model: Path | None
    evaluation: CocoEvaluation | None
    raw_evaluation: CocoEvaluation | None = None
    best_model: Path | None = None
    stopped_early: bool = False
    history: list[StepResult] = field(default_factory=list)


@dataclass(frozen=True)
class _Evaluation:
    """One evaluation round: the raw weights and, with EMA, the average."""

    iteration: int
    raw: CocoEvaluation
    ema: CocoEvaluation | None

    @property
    def primary(self) -> CocoEvaluation:
        """What the run is judged by: the EMA when there is one."""
        return self.ema if self.ema is not None else self.raw


class Trainer:
    """Train a Focus-DETR model.

    Args:
        config: model, training recipe and losses.
        train_dataset: training set (with training transforms), a
            :class:`~focus_detr.data.CocoDetection` or any dataset of ``(image, target)``.
        output_dir: run folder. A folder holding an earlier run is refused unless ``resume``,
            ``overwrite`` or ``new_folder_if_taken`` (see
            :func:`~focus_detr.engine.run_folder.choose_run_folder`).
        val_dataset: evaluation set (no transforms needed: the test resize is applied).
        device: ``cpu``, ``cuda`` or a device (default CUDA when available).
        resume: continue the run of ``output_dir`` (an error if it holds no readable
            checkpoint). Settings that differ from the checkpoint's are applied from the
            resumed iteration and reported; another model architecture is refused.
        overwrite: remove an earlier run's files from ``output_dir`` first.
        new_folder_if_taken: write to a fresh ``<output_dir>-N`` if ``output_dir`` is taken.
        max_iters: stop after this many steps (the schedule still follows the epochs).
        backbone_weights: ImageNet weights for the backbone (torchvision ResNet or Swin file).
        init_weights: trained weights to start from (checkpoint, URL, preset name or an
            :class:`~focus_detr.engine.initialization.InitSource`): every matching tensor is
            loaded and class rows are mapped by class name (see
            :func:`~focus_detr.engine.initialization.initialize_from`); a resumed run continues
            from its checkpoint instead. Recorded in ``metrics.jsonl`` and the checkpoints.
        metadata: extra entries recorded in the checkpoints (e.g. the preset's name).
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
        overwrite: bool = False,
        new_folder_if_taken: bool = False,
        max_iters: int | None = None,
        backbone_weights: str | os.PathLike[str] | None = None,
        init_weights: Any = None,
        metadata: Mapping[str, Any] | None = None,
        tensorboard: bool = False,
        progress: bool = True,
        find_unused_parameters: bool = False,
    ) -> None:
        self.config = config
        self.train_cfg = config.train
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.progress = progress
        self.metadata = dict(metadata or {})
        self.context: DistributedContext = init_distributed(device)
        self.device = self.context.device
        self.output_dir = self._choose_folder(output_dir, resume, overwrite, new_folder_if_taken)
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
        self.init_report = self._initialize(init_weights, resume)  # before the EMA copies it
        self.ema = self._build_ema()
        self.optimizer = build_optimizer(self.model, self.train_cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_cfg.amp == "fp16")
        self.criterion = build_criterion(self.config.loss, self.config.model).to(self.device)
        self.iteration = 0
        self.best = BestSoFar()
        self._last_evaluation: _Evaluation | None = None
        resumed = self._resume() if resume else None
        self.scheduler = build_scheduler(self.optimizer, self.schedule, self.iteration)
        self.step = self._build_step(find_unused_parameters, resumed)
        self.metrics = MetricsLogger(
            self.output_dir, enabled=self.context.is_main, tensorboard=tensorboard
        )
        if resumed is not None:
            self._record_resume(resumed)
        if self.init_report is not None:
            self.metrics.write({"type": "init_weights", **self.init_report.as_dict()})
        elif resumed is not None and "init_weights" in resumed:  # keep it in the checkpoints
            self.metadata.setdefault("init_weights", resumed["init_weights"])

    # ---------------------------------------------------------------- setup

    def _choose_folder(
        self, folder: str | os.PathLike[str], resume: bool, overwrite: bool, new_folder: bool
    ) -> Path:
        """The run folder, decided by the main process (it may remove an earlier run)."""
        choice = None
        if self.context.is_main:
            choice = choose_run_folder(
                folder, resume=resume, overwrite=overwrite, new_folder_if_taken=new_folder
            )
            removed = remove_stale_temporaries(choice.folder)
            if removed:
                self.log(f"removed {len(removed)} temporary files left by a killed run")
            if choice.note:
                self.log(f"note: {choice.note}")
        return Path(broadcast_object(str(choice.folder) if choice else None))

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

    def _initialize(self, init_weights: Any, resume: bool) -> InitReport | None:
        """Start from trained weights, class rows mapped by the training set's class names."""
        if init_weights is None:
            return None
        if resume:
            self.log("continuing a run: its initial weights are not applied again")
            return None
        names = [category["name"] for category in self.categories]
        report = initialize_from(self.model, init_weights, class_names=names)
        self.log(report.summary())
        self.metadata["init_weights"] = report.source  # recorded in the checkpoints
        return report

    def _build_ema(self) -> ModelEMA | None:
        if not self.train_cfg.ema:
            return None
        return ModelEMA(self.model, self.train_cfg.ema_decay, self.train_cfg.ema_tau)

    def _build_step(
        self, find_unused_parameters: bool, resumed: dict[str, Any] | None
    ) -> OptimizationStep:
        """The step runner around the optimiser, schedule, scaler, criterion and the
        (DDP-wrapped) forward model."""
        step = OptimizationStep(
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
            ema=self.ema,
        )
        if resumed is not None:
            step.nonfinite_in_a_row = int(resumed.get("nonfinite_in_a_row", 0))
        return step

    def _wrap_ddp(self, find_unused_parameters: bool) -> nn.Module:
        if not self.context.is_distributed:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def _resume(self) -> dict[str, Any]:
        """Restore the run's weights, optimiser, scaler, EMA, position, best AP and random
        states from its newest readable checkpoint; returns that checkpoint."""
        path, state = load_resume_checkpoint(self.output_dir)
        saved = config_from_dict(state["config"])
        differences = setting_changes(saved, self.config, ("model",))
        if differences:
            raise CheckpointError(
                f"{path} was written for another model; the run cannot continue with: "
                + "; ".join(differences)
                + ". Start a new run (another --out) to train that model."
            )
        if state.get("data") != self._data_signature():
            warnings.warn(
                f"{path}: the data set, total batch or seed changed since the checkpoint "
                f"({state.get('data')} -> {self._data_signature()}); the data order differs",
                stacklevel=2,
            )
        self.model.load_state_dict(state["model"])
        restore_optimizer_state(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # EMA switched on while resuming: start it here
            self.ema = self._build_ema()
        if state.get("best") is not None:
            self.best.load_state_dict(state["best"])
        self.iteration = int(state["iteration"])
        restore_process_rng(
            state["rng"], self.context.rank, self.context.world_size, self.train_cfg.seed
        )
        return {"path": path, "saved_config": saved, **state}

    def _record_resume(self, resumed: dict[str, Any]) -> None:
        """Report the resumed position and changed settings; drop later metrics records."""
        changes = setting_changes(resumed["saved_config"], self.config, ("train", "loss"))
        if self.context.is_main:
            dropped = truncate_metrics(self.output_dir, self.iteration)
            if dropped:
                self.log(f"dropped {dropped} metrics records written after that checkpoint")
        self.metrics.write({"type": "resume", "iteration": self.iteration, "changed": changes})
        self.log(
            f"resumed from {resumed['path']} at iteration {self.iteration} (epoch {self.epoch:.2f})"
        )
        if changes:
            self.log(
                f"settings changed since that checkpoint, applied from iteration "
                f"{self.iteration}: " + "; ".join(changes)
            )

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
        """Run from the current iteration to the end (or ``max_iters``, or until evaluations
        stop improving); evaluate and write the final model at the end."""
        history: list[StepResult] = []
        stopped_early = False
        already_complete = self.iteration >= self.stop_iteration
        try:
            if not already_complete:
                history, stopped_early = self._loop()
            evaluation = None
            if self.val_dataset is not None:
                best_before = self.best.state_dict()
                evaluation = self._evaluate()
                if self.best.state_dict() != best_before and not already_complete:
                    self.save_checkpoint()  # a resumed run must know this evaluation
            final = self._final_model_path(already_complete)
        finally:
            self.metrics.close()
        best = self.output_dir / BEST_MODEL
        return TrainResult(
            output_dir=self.output_dir,
            iterations=self.iteration,
            max_iters=self.schedule.max_iters,
            final_model=final,
            evaluation=evaluation.primary if evaluation else None,
            raw_evaluation=evaluation.raw if evaluation and evaluation.ema else None,
            best_model=best if evaluation is not None and best.is_file() else None,
            stopped_early=stopped_early,
            history=history,
        )

    def close(self) -> None:
        """Leave the process group (when this trainer created it)."""
        shutdown_distributed(self.context)

    def _loop(self) -> tuple[list[StepResult], bool]:
        from tqdm import tqdm

        start, stop = self.iteration, self.stop_iteration
        batches = self._micro_batches(start, stop)
        eval_points = set(self._evaluation_iterations())
        step_log = StepLog(self.metrics, self.train_cfg.log_every_iters, self.log)
        history: list[StepResult] = []
        stopped_early = False
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
                last = self.iteration == stop
                step_log.record(result, epoch=self.epoch, bar=bar, last=last)
                if self.iteration in eval_points and not last:
                    self._evaluate()
                    if self.best.patience_exhausted(self.train_cfg.patience):
                        stopped_early = True
                        break
                every = self.train_cfg.checkpoint_every_iters
                if every > 0 and self.iteration % every == 0 and not last:
                    self.save_checkpoint()
        self.save_checkpoint()
        if stopped_early:
            self.log(
                f"stopped early at iteration {self.iteration}: no better AP in "
                f"{self.train_cfg.patience} evaluations; the best, AP {self.best.ap:.4f} at "
                f"iteration {self.best.iteration}, is in {self.output_dir / BEST_MODEL}"
            )
        return history, stopped_early

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
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": self.best.state_dict(),
            "iteration": self.iteration,
            "epoch": epoch,
            "position_in_epoch": position,
            "data": self._data_signature(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "rng": rng_states,
            "config": config_to_dict(self.config),
            "categories": self.categories,
            **self.metadata,
        }
        save_training_checkpoint(self.output_dir, state)

    def _evaluate(self) -> _Evaluation:
        """Evaluate the raw weights (and the EMA), log it, keep ``model_best.pth``."""
        previous = self._last_evaluation
        if previous is not None and previous.iteration == self.iteration:
            return previous  # e.g. the final evaluation right after the last periodic one
        raw = self._evaluate_model(self.model)
        ema = self._evaluate_model(self.ema.module) if self.ema is not None else None
        result = _Evaluation(self.iteration, raw, ema)
        record = {"type": "eval", "iteration": self.iteration, "epoch": self.epoch}
        record.update(raw.as_dict())
        if ema is not None:
            record.update({f"ema_{name}": value for name, value in ema.as_dict().items()})
        self.metrics.write(record)
        message = f"iteration {self.iteration}: AP {raw.AP:.4f} AP50 {raw.AP50:.4f}"
        if ema is not None:
            message += f" (EMA: AP {ema.AP:.4f} AP50 {ema.AP50:.4f})"
        self.log(message)
        if self.best.record(result.primary.AP, self.iteration) and self.context.is_main:
            self._save_weights(BEST_MODEL, ap=result.primary.AP, iteration=self.iteration)
        self._last_evaluation = result
        return result

    def _evaluate_model(self, model: nn.Module) -> CocoEvaluation:
        return evaluate(
            model,
            self.val_dataset,
            batch_size=max(self.micro_batch, 1),
            device=self.device,
            num_workers=min(self.train_cfg.num_workers, 2),
            category_ids=getattr(self.train_dataset, "category_ids", None),
            autocast_dtype=self.autocast_dtype,
            progress=self.progress,
        )

    def _final_model_path(self, already_complete: bool) -> Path | None:
        """Write ``model_final.pth`` (main process), unless the run was already complete."""
        if not self.context.is_main:
            return None
        final = self.output_dir / FINAL_MODEL
        if already_complete and final.is_file():
            self.log(f"the run in {self.output_dir} is complete: {final} left as it was")
            return final
        return self._save_weights(FINAL_MODEL, iteration=self.iteration)

    def _save_weights(self, name: str, **extra: Any) -> Path:
        """The weights to use (the EMA with ``train.ema``; the raw ones saved beside it)."""
        if self.ema is not None:
            weights = self.ema.module.state_dict()
            extra = {**extra, "ema": True, "raw_model": self.model.state_dict()}
        else:
            weights = self.model.state_dict()
            extra = {**extra, "ema": False}
        return save_model(
            self.output_dir / name,
            weights,
            config_to_dict(self.config),
            self.categories,
            **self.metadata,
            **extra,
        )


def train(config: Config, train_dataset: Any, **options: Any) -> TrainResult:
    """Build a :class:`Trainer` with ``options`` and run it (see its arguments)."""
    trainer = Trainer(config, train_dataset, **options)
    try:
        return trainer.train()
    finally:
        trainer.close()
