"""Batching of detection samples and a reproducibly seeded ``DataLoader``.

Reproducibility: :func:`build_dataloader` gives every sample of every epoch its own seed, drawn
from ``(seed, epoch)`` in the main process, and runs the dataset's ``__getitem__`` under that
seed (torch's RNG is forked, so the caller's RNG stream is untouched). Augmentations therefore
depend only on ``(seed, epoch, position in the epoch)``: the same with 0 or 8 workers, and the
same after resuming at an epoch (call ``loader.sampler.set_epoch(epoch)``).
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


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, sample seed)`` pairs, fresh and reproducible every epoch.

    Args:
        num_samples: dataset length (used when ``sampler`` is None).
        shuffle: random order (a permutation drawn from ``(seed, epoch)``).
        seed: base seed.
        sampler: optional sampler giving the indices instead (e.g. a ``DistributedSampler``;
            its ``set_epoch`` is called too).

    Iterating without calling :meth:`set_epoch` moves to the next epoch automatically.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int,
        sampler: Sampler[int] | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order and seeds of ``epoch`` on the next iteration."""
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) if self.sampler is not None else self.num_samples  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = _epoch_generator(self.seed, self.epoch)
        if self.sampler is not None:
            indices = [int(i) for i in self.sampler]
        elif self.shuffle:
            indices = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            indices = list(range(self.num_samples))
        seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
        self.set_epoch(self.epoch + 1)
        return iter(zip(indices, seeds))


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


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool,
    sampler: Sampler[int] | None = None,
    collate_fn: Callable[[Any], Any] = collate_detection,
    persistent_workers: bool = False,
) -> DataLoader:
    """``DataLoader`` of ``(ImageBatch, targets)`` with reproducible order and augmentation.

    Args:
        dataset: map-style dataset of ``(image, target)`` pairs.
        batch_size: images per batch.
        shuffle: random order each epoch (not with ``sampler``).
        num_workers: loader processes (0 loads in the calling process).
        seed: base seed of the order and of every sample's augmentation.
        drop_last: drop the last incomplete batch.
        sampler: optional index sampler (e.g. ``DistributedSampler``) replacing the order.
        collate_fn: batch builder, :func:`collate_detection` by default.
        persistent_workers: keep workers alive between epochs.

    Returns:
        A ``DataLoader`` whose ``sampler`` is a :class:`SeededSampler` (call its ``set_epoch``
        when resuming) and whose ``dataset`` is a :class:`SeededDataset` around ``dataset``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if sampler is not None and shuffle:
        raise ValueError("shuffle must be False when a sampler is given (the sampler orders)")
    seeded_sampler = SeededSampler(len(dataset), shuffle=shuffle, seed=seed, sampler=sampler)  # type: ignore[arg-type]
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=seeded_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(int(seed)),
        persistent_workers=persistent_workers and num_workers > 0,
    )
