"""COCO evaluation of a model on a COCO-format dataset (from Python or from the training loop).

Images go through detectron2's test resize (short side ``min_size``, long side at most
``max_size``), are batched (the model gives each image the same result in any batch), and the
detections are mapped back to each file's own pixels before COCO box AP is computed by
:func:`focus_detr.engine.coco_metrics.evaluate_detections`. Under ``torchrun`` every process
evaluates a shard of the images and the main process scores all detections.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from focus_detr.data.collate import collate_detection
from focus_detr.data.transforms import build_test_transforms
from focus_detr.engine.coco_metrics import (
    CocoEvaluation,
    evaluate_detections,
    to_coco_results,
    write_results_json,
)
from focus_detr.engine.distributed import all_gather_objects, broadcast_object, is_distributed
from focus_detr.engine.training_checkpoint import unwrap_model

if TYPE_CHECKING:
    from focus_detr.predict.detector import Detector


def evaluate(
    model: Detector | nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    num_workers: int = 0,
    category_ids: Sequence[int] | None = None,
    per_class: bool = False,
    results_path: str | os.PathLike[str] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> CocoEvaluation:
    """COCO box AP of ``model`` on ``dataset``.

    Args:
        model: a :class:`~focus_detr.predict.Detector`: a :class:`~focus_detr.FocusDETR` (or
            a DDP wrapper of one), put in eval mode for the call and returned to its previous
            mode, or an exported graph (:func:`~focus_detr.load_model`).
        dataset: a :class:`~focus_detr.data.CocoDetection` (needs ``ground_truth`` or
            ``annotation_file``, ``image_ids`` and ``category_ids``); its own transforms are
            replaced by the test resize.
        batch_size: images per forward pass.
        device: where to run (a PyTorch model is moved there; default: the model's device).
        min_size / max_size: test resize; by default the model's recipe (``model.config``,
            see :meth:`~focus_detr.config.ModelConfig.test_resize`; 800/1333 for the zoo).
        num_workers: loader processes.
        category_ids: label -> COCO category id (default ``dataset.category_ids``); detections
            of labels beyond it are dropped.
        per_class: also compute per-category AP.
        results_path: write the COCO results JSON there (main process).
        autocast_dtype: run under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
        progress: show a progress bar (main process).

    Returns:
        The metrics (the same object on every process).
    """
    has_ground_truth = hasattr(dataset, "ground_truth") or hasattr(dataset, "annotation_file")
    if not (has_ground_truth and hasattr(dataset, "image_ids")):
        raise ValueError(
            "evaluate needs a CocoDetection-like dataset (image_ids, and ground_truth or "
            "annotation_file)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    label_to_id = list(category_ids if category_ids is not None else dataset.category_ids)
    # a Detector, or any module called alike that has a ``config`` (test resize)
    core: Any = unwrap_model(model) if isinstance(model, nn.Module) else model
    # evaluation never disturbs the training run's random streams
    with (
        _evaluating(core, device) as run_device,
        torch.random.fork_rng(devices=_cuda_devices(run_device)),
    ):
        results = _detect(
            core,
            _with_test_transforms(dataset, core.config.test_resize(min_size, max_size)),
            batch_size=batch_size,
            device=run_device,
            num_workers=num_workers,
            label_to_id=label_to_id,
            autocast_dtype=autocast_dtype,
            progress=progress,
        )
    return _score(results, dataset, per_class, results_path)


@contextlib.contextmanager
def _evaluating(detector: Any, device: torch.device | str | None) -> Iterator[torch.device]:
    """A PyTorch module moved to ``device`` and in eval mode inside the block (its mode is
    restored after); an exported graph runs where it was opened. Yields the device."""
    if not isinstance(detector, nn.Module):
        yield detector.device
        return
    if device is not None:
        detector.to(device)
    was_training = detector.training
    detector.eval()
    try:
        yield torch.device(device) if device is not None else _module_device(detector)
    finally:
        detector.train(was_training)


def _detect(
    model: Any,
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    label_to_id: list[int],
    autocast_dtype: torch.dtype | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """COCO results of this process's shard of ``dataset``."""
    rank, world_size = _rank_and_world()
    indices = list(range(rank, len(dataset), world_size))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(0),
    )
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    bar = tqdm(loader, desc="evaluating", disable=not progress or rank != 0, leave=False)
    with torch.inference_mode():
        for images, targets in bar:
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                detections = model(images.to(device))
            for found, target in zip(detections, targets):
                results.extend(_image_results(found, target, label_to_id))
    return results


def _image_results(
    detections: dict[str, Tensor], target: dict[str, Any], label_to_id: list[int]
) -> list[dict[str, Any]]:
    """One image's detections in its file's pixels, as COCO results."""
    boxes = rescale_boxes(detections["boxes"].float(), target["size"], target["orig_size"])
    labels = detections["labels"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (labels < len(label_to_id))
    return to_coco_results(
        int(target["image_id"]),
        boxes[keep],
        detections["scores"][keep].float(),
        labels[keep],
        label_to_id,
    )


def rescale_boxes(
    boxes_xyxy: Tensor, input_size: Sequence[int], original_size: Sequence[int]
) -> Tensor:
    """``[K, 4]`` xyxy boxes of a resized ``input_size`` image scaled to ``original_size``
    (both (height, width)) and clipped to it (detectron2's ``detector_postprocess``)."""
    height, width = int(original_size[0]), int(original_size[1])
    scale_y = height / int(input_size[0])
    scale_x = width / int(input_size[1])
    boxes = boxes_xyxy.clone()
    boxes[:, 0::2] = (boxes[:, 0::2] * scale_x).clamp(0, width)
    boxes[:, 1::2] = (boxes[:, 1::2] * scale_y).clamp(0, height)
    return boxes


def _score(
    results: list[dict[str, Any]],
    dataset: Any,
    per_class: bool,
    results_path: str | os.PathLike[str] | None,
) -> CocoEvaluation:
    """Gather every process's results; the main process scores them and shares the metrics."""
    rank, _ = _rank_and_world()
    gathered = all_gather_objects(results) if is_distributed() else [results]
    evaluation = None
    if rank == 0:
        merged = [item for part in gathered for item in part]
        if results_path is not None:
            write_results_json(results_path, merged)
        # a CocoDetection read from YOLO or VOC has its COCO dict as ground truth
        ground_truth = getattr(dataset, "ground_truth", None) or dataset.annotation_file
        evaluation = evaluate_detections(
            merged, ground_truth, per_class=per_class, image_ids=dataset.image_ids
        )
    return broadcast_object(evaluation)


def _with_test_transforms(dataset: Any, size: tuple[int, int]) -> Any:
    """A shallow copy of ``dataset`` whose transforms are the test resize ``size``."""
    if not hasattr(dataset, "transforms"):
        raise ValueError("the dataset has no 'transforms' attribute to set the test resize on")
    view = copy.copy(dataset)
    view.transforms = build_test_transforms(*size)
    return view


def _rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _module_device(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
