"""Batching of detection samples and the reproducible training ``DataLoader``.

Every sample of every epoch gets its own seed, drawn from ``(seed, epoch)`` in the main
process, and the dataset's ``__getitem__`` runs under that seed (:class:`SeededDataset`; torch's
RNG is forked, so the caller's stream is untouched). :class:`StepBatchSampler` /
:func:`build_step_dataloader` concatenate the epochs' orders into one stream of samples and
optimisation step ``s`` takes the samples ``[s * B, (s + 1) * B)`` of it (``B`` the total
batch). The images of a step, and their augmentation, then depend only on ``(seed, s)``: not
on the number of processes, the gradient accumulation, the loader workers, or on where a run
was interrupted and resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from focus_detr.structures import ImageBatch

Target = dict[str, Any]


def collate_detection(
    batch: Sequence[tuple[Tensor, Target]],
) -> tuple[ImageBatch, list[Target]]:
    """Pad ``[3, H_i, W_i]`` images bottom/right with zeros into one :class:`ImageBatch`.

    Args:
        batch: ``(image, target)`` pairs as returned by
            :class:`focus_detr.data.coco.CocoDetection`; images share one dtype.

    Returns:
        ``(images, targets)``: ``images.pixels`` is ``[B, 3, max H, max W]`` (same dtype as the
        inputs), ``images.image_sizes`` ``[B, 2]`` the (height, width) of each image; the
        targets are passed through as a list.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return ImageBatch.from_images(images), targets


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Distinct, well-mixed streams per (seed, epoch) pair.
    value = seed % 2**64
    entropy = [value & 0xFFFFFFFF, value >> 32, epoch % 2**32]
    mixed = np.random.SeedSequence(entropy).generate_state(2)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


def epoch_order(
    num_samples: int, *, seed: int, epoch: int, shuffle: bool
) -> tuple[list[int], list[int]]:
    """Dataset indices and per-sample augmentation seeds of one epoch.

    Args:
        num_samples: dataset length.
        seed: base seed.
        epoch: epoch number (each epoch has its own order and seeds).
        shuffle: a random permutation drawn from ``(seed, epoch)``, else ``0..N-1``.

    Returns:
        ``(indices, seeds)``, two lists of length ``num_samples``.
    """
    generator = _epoch_generator(int(seed), int(epoch))
    if shuffle:
        indices = torch.randperm(num_samples, generator=generator).tolist()
    else:
        indices = list(range(num_samples))
    seeds = torch.randint(0, 2**62, (num_samples,), generator=generator).tolist()
    return indices, seeds


class SeededDataset(Dataset):
    """Wraps a map-style dataset so that item ``(index, seed)`` is loaded under ``seed``.

    Attribute access falls through to the wrapped dataset (``loader.dataset.category_ids``).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs of a loader worker from its torch seed."""
    del worker_id
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def micro_batch_size(total_batch_size: int, world_size: int, grad_accumulation: int) -> int:
    """Images per process and micro-batch: ``total / (world_size * grad_accumulation)``.

    Raises:
        ValueError: if the total batch does not split evenly.
    """
    if total_batch_size < 1 or world_size < 1 or grad_accumulation < 1:
        raise ValueError(
            f"batch sizes must be positive, got total {total_batch_size}, world size "
            f"{world_size}, accumulation {grad_accumulation}"
        )
    parts = world_size * grad_accumulation
    if total_batch_size % parts:
        raise ValueError(
            f"total_batch_size {total_batch_size} is not divisible by world_size x "
            f"grad_accumulation = {world_size} x {grad_accumulation}"
        )
    return total_batch_size // parts


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(dataset index, sample seed)`` for one process, step after step.

    The epochs' orders (:func:`epoch_order`) are concatenated into one stream; optimisation step
    ``s`` uses the stream's samples ``[s * B, (s + 1) * B)`` (``B = total_batch_size``, so a
    step may straddle two epochs). Process ``rank`` takes the ``rank``-th of ``world_size``
    equal slices of them and cuts it into ``grad_accumulation`` micro-batches, yielded in order.

    Args:
        num_samples: dataset length.
        total_batch_size: images of one optimisation step over all processes.
        seed: base seed of the orders and of every sample's augmentation.
        shuffle: shuffle each epoch (else every epoch is ``0..N-1``).
        world_size: number of processes.
        rank: this process.
        grad_accumulation: micro-batches per process and step.
        start_step: first step to yield (resuming).
        num_steps: steps to yield from ``start_step``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        total_batch_size: int,
        seed: int,
        num_steps: int,
        shuffle: bool = True,
        world_size: int = 1,
        rank: int = 0,
        grad_accumulation: int = 1,
        start_step: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if start_step < 0 or num_steps < 0:
            raise ValueError(f"steps must be >= 0, got start {start_step}, count {num_steps}")
        self.micro_batch_size = micro_batch_size(total_batch_size, world_size, grad_accumulation)
        self.num_samples = num_samples
        self.total_batch_size = total_batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.world_size = world_size
        self.rank = rank
        self.grad_accumulation = grad_accumulation
        self.start_step = start_step
        self.num_steps = num_steps
        self._cached: tuple[int, tuple[list[int], list[int]]] | None = None

    def __len__(self) -> int:
        return self.num_steps * self.grad_accumulation

    def step_samples(self, step: int) -> list[tuple[int, int]]:
        """All ``total_batch_size`` ``(index, seed)`` pairs of ``step``, over every process."""
        first = step * self.total_batch_size
        return [self._sample(position) for position in range(first, first + self.total_batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_process = self.micro_batch_size * self.grad_accumulation
        for step in range(self.start_step, self.start_step + self.num_steps):
            first = step * self.total_batch_size + self.rank * per_process
            for micro in range(self.grad_accumulation):
                start = first + micro * self.micro_batch_size
                yield [self._sample(p) for p in range(start, start + self.micro_batch_size)]

    def _sample(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.num_samples)
        if self._cached is None or self._cached[0] != epoch:
            order = epoch_order(self.num_samples, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
            self._cached = (epoch, order)
        indices, seeds = self._cached[1]
        return indices[offset], seeds[offset]


def build_step_dataloader(
    dataset: Dataset,
    *,
    total_batch_size: int,
    seed: int,
    num_steps: int,
    num_workers: int,
    world_size: int = 1,
    rank: int = 0,
    grad_accumulation: int = 1,
    start_step: int = 0,
    shuffle: bool = True,
    collate_fn: Callable[[Any], Any] = collate_detection,
) -> DataLoader:
    """Training ``DataLoader``: the micro-batches of :class:`StepBatchSampler`, in order.

    Yields ``num_steps * grad_accumulation`` batches ``(ImageBatch, targets)`` of
    ``total_batch_size / (world_size * grad_accumulation)`` images, each image loaded under its
    own seed (see :class:`SeededDataset`), identical with any number of workers.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    batch_sampler = StepBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        total_batch_size=total_batch_size,
        seed=seed,
        num_steps=num_steps,
        shuffle=shuffle,
        world_size=world_size,
        rank=rank,
        grad_accumulation=grad_accumulation,
        start_step=start_step,
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(int(seed)),
    )
