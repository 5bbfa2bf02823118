"""Training checkpoints (``last.pth``) and the released-style ``model_final.pth``.

Every file is written atomically (temporary file + ``os.replace``), so a run killed at any time
leaves either the old or the new checkpoint, never half of one. Before ``last.pth`` is replaced,
the previous one is kept as ``last_previous.pth`` (a hard link where the file system allows),
and :func:`load_resume_checkpoint` falls back to it if ``last.pth`` cannot be read.

Everything stored is tensors and plain containers: the files load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from focus_detr.engine.run_folder import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT
from focus_detr.io import atomic_save
from focus_detr.weights.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "focus-detr"
TRAINING_STATE_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """This process's random states: torch CPU and CUDA, NumPy and Python ``random``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has %d CUDA RNG states; not restored", len(cuda_states))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def restore_process_rng(
    states: Sequence[Mapping[str, Any]], rank: int, world_size: int, seed: int
) -> None:
    """Restore this process's saved random state (one entry per process of the saved run).

    If the number of processes changed, the states cannot be matched: re-seed instead (warns).
    """
    if len(states) == world_size:
        restore_rng_state(states[rank])
        return
    warnings.warn(
        f"the checkpoint was written by {len(states)} processes, now {world_size}: random "
        "states are re-seeded instead of restored",
        stacklevel=3,
    )
    seed_everything(seed + 7919 * len(states) + rank)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def categories_of(dataset: object, num_classes: int) -> list[dict[str, Any]]:
    """``[{"id", "name"}]`` of the model's ``num_classes`` labels.

    The dataset's ``category_ids`` / ``category_names`` first; labels beyond them (a model with
    more classes than the data) get unused ids and the names ``class <label>``.
    """
    ids = [int(i) for i in getattr(dataset, "category_ids", None) or []]
    names = [str(n) for n in getattr(dataset, "category_names", None) or []]
    if len(names) != len(ids):
        names = [f"class {label}" for label in range(len(ids))]
    next_id = max(ids, default=0) + 1
    for label in range(len(ids), num_classes):
        ids.append(next_id)
        names.append(f"class {label}")
        next_id += 1
    return [{"id": i, "name": n} for i, n in zip(ids[:num_classes], names[:num_classes])]


def save_training_checkpoint(output_dir: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``output_dir/last.pth``, keeping the previous file as
    ``last_previous.pth``. Returns the path written."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / LAST_CHECKPOINT
    if last.is_file():
        _keep_previous(last, folder / PREVIOUS_CHECKPOINT)
    atomic_save(dict(state), last)
    return last


def _keep_previous(last: Path, previous: Path) -> None:
    """Make ``previous`` the current ``last`` without ever leaving ``last`` missing."""
    staging = previous.with_name(f".{previous.name}.link")
    staging.unlink(missing_ok=True)
    try:
        os.link(last, staging)
    except OSError:  # no hard links here: copy (slower, same guarantee)
        atomic_save(torch.load(last, map_location="cpu", weights_only=True), previous)
        return
    os.replace(staging, previous)


def load_resume_checkpoint(output_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The newest readable training checkpoint of ``output_dir`` and its content.

    ``last.pth`` first; ``last_previous.pth`` if the former is missing or damaged.

    Raises:
        CheckpointError: no checkpoint, or none that can be read (the reasons are listed).
    """
    folder = Path(output_dir)
    problems = []
    for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = folder / name
        if not path.is_file():
            continue
        try:
            return path, load_training_checkpoint(path)
        except CheckpointError as error:
            logger.warning("%s; trying the previous checkpoint", error)
            problems.append(str(error))
    if not problems:
        raise CheckpointError(
            f"nothing to resume in {folder}: no {LAST_CHECKPOINT} or {PREVIOUS_CHECKPOINT} "
            "(start without --resume, or point --out at the run to continue)"
        )
    raise CheckpointError(
        f"cannot resume from {folder}: no checkpoint can be read:\n  " + "\n  ".join(problems)
    )


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``last.pth`` written by :func:`save_training_checkpoint`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read training checkpoint {path}: {error}") from error
    required = {"model", "optimizer", "iteration", "rng", "config"}
    if not isinstance(state, dict) or not required <= set(state):
        missing = sorted(required - set(state)) if isinstance(state, dict) else sorted(required)
        raise CheckpointError(f"{path} is not a focus-detr training checkpoint (lacks {missing})")
    return state


def save_model(
    path: str | os.PathLike[str],
    weights: Mapping[str, Tensor],
    config: Mapping[str, Any],
    categories: Sequence[Mapping[str, Any]],
    **extra: Any,
) -> Path:
    """Write ``{"format", "model", "config", "categories", **extra}`` (what ``load_model``
    reads: ``model`` holds the weights to use)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(weights),
        "config": dict(config),
        "categories": [dict(c) for c in categories],
        **extra,
    }
    atomic_save(payload, path)
    return Path(path)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
