"""Processes of a ``torchrun`` launch: who am I, which device, and the few collectives we use.

``torchrun --nproc_per_node N -m focus_detr.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and joins the process group (NCCL on CUDA,
gloo on CPU). Without them everything runs in one process and the collectives below are no-ops.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """The launch environment is inconsistent (e.g. more processes than GPUs)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the launch.

    Attributes:
        rank: global rank (0 writes files and prints).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: this process's device.
        initialized_here: :func:`init_distributed` created the process group (and
            :func:`shutdown_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise DistributedError(
            f"environment variable {name}={value!r} is not an integer"
        ) from error


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Read the ``torchrun`` environment, pick the device and join the process group.

    Args:
        device: ``"cpu"``, ``"cuda"`` (the GPU ``LOCAL_RANK``) or an explicit device; default
            CUDA when available.

    Returns:
        The context; a single process when ``WORLD_SIZE`` is unset or 1.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} does not fit WORLD_SIZE={world_size}")
    resolved = _resolve_device(device, local_rank)
    initialized_here = False
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise DistributedError("this PyTorch build has no torch.distributed")
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=30),
            device_id=resolved if resolved.type == "cuda" else None,
        )
        initialized_here = True
    return DistributedContext(rank, world_size, local_rank, resolved, initialized_here)


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise DistributedError("device 'cuda' asked for, but CUDA is not available")
    if resolved.index is None:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible"
            )
        resolved = torch.device("cuda", local_rank)
    torch.cuda.set_device(resolved)
    return resolved


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """A process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (in place; returned for convenience)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, by rank (picklable objects)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``value`` on every process."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]
