"""Contrastive denoising queries (DINO, Zhang et al. 2022), built from the targets in training.

Each target gets ``num_groups`` pairs of noisy copies: a positive copy (box corners moved by
less than half the box size, to be reconstructed into the target) and a negative copy (corners
moved by between one half and one box size, to be classified as background). Labels of both
copies are replaced by a random class with probability ``label_noise_ratio / 2``.

The random numbers are drawn in the same order and shapes as detrex's ``prepare_for_cdn``, so
that with the same seed on the same device the queries are identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from focus_detr.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from focus_detr.structures import DenoisingQueries


def build_denoising_queries(
    targets: Sequence[Mapping[str, Tensor]],
    *,
    num_denoising_queries: int,
    num_matching_queries: int,
    num_classes: int,
    label_embedding: Tensor,
    label_noise_ratio: float,
    box_noise_scale: float,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Noisy positive/negative copies of the targets as extra decoder queries.

    ``num_groups = max(1, num_denoising_queries // max_targets)`` groups of
    ``group_size = 2 * max_targets`` queries (so the total can exceed
    ``num_denoising_queries`` when an image has more targets than that); see
    :class:`~focus_detr.structures.DenoisingQueries` for the layout.

    Args:
        targets: per image ``{"labels": int64 [n_b], "boxes": [n_b, 4] cxcywh normalised}``.
        num_denoising_queries: budget of denoising queries (detrex ``dn_number``); 0 disables.
        num_matching_queries: number of ordinary (Hungarian-matched) decoder queries; only
            used for the size of the attention mask.
        num_classes: number of classes (range of the random labels).
        label_embedding: ``[num_classes, D]`` embedding table of the labels (its gradient flows
            through the returned ``label_embeddings``).
        label_noise_ratio: twice the probability that a copy gets a random label.
        box_noise_scale: scale of the corner noise relative to half the box size.
        generator: random generator on the targets' device; the global RNG if None.

    Returns:
        the denoising queries, or None when ``num_denoising_queries == 0`` or no image has a
        target.
    """
    _check_arguments(
        targets,
        num_denoising_queries,
        num_matching_queries,
        num_classes,
        label_embedding,
        label_noise_ratio,
        box_noise_scale,
    )
    counts = [len(t["labels"]) for t in targets]
    max_targets = max(counts, default=0)
    if num_denoising_queries == 0 or max_targets == 0:
        return None
    num_groups = max(1, num_denoising_queries // max_targets)
    group_size = 2 * max_targets
    device = targets[0]["boxes"].device
    labels = torch.cat([t["labels"].to(device) for t in targets])
    boxes = torch.cat([t["boxes"].to(device) for t in targets])

    # Copy c of every target, c = 2g (positive of group g) or 2g + 1 (negative): copy-major.
    num_copies = 2 * num_groups
    noisy_labels = labels.repeat(num_copies)
    noisy_boxes = boxes.repeat(num_copies, 1)
    if label_noise_ratio > 0:
        noisy_labels = _flip_labels(noisy_labels, label_noise_ratio, num_classes, generator)
    if box_noise_scale > 0:
        noisy_boxes = _jitter_boxes(noisy_boxes, num_copies, box_noise_scale, generator)

    label_embeddings, box_logits = _place_copies(
        label_embedding[noisy_labels.to(label_embedding.device)].to(device),
        inverse_sigmoid(noisy_boxes),
        counts,
        num_copies,
        max_targets,
    )
    attention_mask = denoising_attention_mask(
        num_groups, group_size, num_matching_queries, device=device
    )
    return DenoisingQueries(
        label_embeddings=label_embeddings,
        box_logits=box_logits,
        attention_mask=attention_mask,
        num_groups=num_groups,
        group_size=group_size,
    )


def denoising_attention_mask(
    num_groups: int,
    group_size: int,
    num_matching_queries: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Self-attention mask of ``[denoising queries, matching queries]``, True = blocked.

    Matching queries cannot see any denoising query (they would read the answers); a denoising
    group cannot see the other groups; denoising queries see the matching queries.

    Returns:
        ``[num_dn + num_matching_queries, num_dn + num_matching_queries]`` bool, with
        ``num_dn = num_groups * group_size``.
    """
    num_dn = num_groups * group_size
    group_of_query = torch.cat(
        (
            torch.arange(num_dn, device=device) // group_size,
            torch.full((num_matching_queries,), -1, device=device, dtype=torch.long),
        )
    )
    key_is_denoising = torch.arange(num_dn + num_matching_queries, device=device) < num_dn
    different_group = group_of_query[:, None] != group_of_query[None, :]
    return key_is_denoising[None, :] & different_group


def _flip_labels(
    labels: Tensor, noise_ratio: float, num_classes: int, generator: torch.Generator | None
) -> Tensor:
    """Replace each label by a uniform random class with probability ``noise_ratio / 2``."""
    draws = torch.rand(labels.shape, generator=generator, device=labels.device, dtype=torch.float32)
    flipped = torch.nonzero(draws < noise_ratio * 0.5).view(-1)
    new_labels = torch.randint(
        0, num_classes, flipped.shape, generator=generator, device=labels.device, dtype=torch.int64
    )
    return labels.scatter(0, flipped, new_labels.to(labels.dtype))


def _jitter_boxes(
    boxes: Tensor, num_copies: int, noise_scale: float, generator: torch.Generator | None
) -> Tensor:
    """Move the corners of ``[num_copies * T, 4]`` cxcywh boxes; odd copies are negatives.

    Each corner moves by ``u * half_size * noise_scale`` with a random sign, ``u`` uniform in
    ``[0, 1)`` for positives and ``[1, 2)`` for negatives; the result is clamped to the image.
    """
    corners = box_cxcywh_to_xyxy(boxes)
    half_size = (boxes[:, 2:] / 2).repeat(1, 2)
    sign = (
        torch.randint(
            0, 2, boxes.shape, generator=generator, device=boxes.device, dtype=torch.float32
        )
        * 2.0
        - 1.0
    )
    magnitude = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype)
    magnitude.view(num_copies, -1, 4)[1::2] += 1.0
    corners = corners + magnitude * sign * half_size * noise_scale
    return box_xyxy_to_cxcywh(corners.clamp(min=0.0, max=1.0))


def _place_copies(
    copy_embeddings: Tensor,
    copy_box_logits: Tensor,
    counts: list[int],
    num_copies: int,
    max_targets: int,
) -> tuple[Tensor, Tensor]:
    """Scatter the copy-major ``[num_copies * T, D]`` / ``[num_copies * T, 4]`` rows into
    ``[B, num_copies * max_targets, D]`` / ``[..., 4]`` query tensors (zeros elsewhere).

    Copy ``c`` of target ``j`` of image ``b`` goes to query ``c * max_targets + j`` of image
    ``b``: copy ``2g`` fills the positive half of group ``g``, copy ``2g + 1`` the negative half.
    """
    device = copy_box_logits.device
    image_of_target = torch.cat(
        [torch.full((count,), image, dtype=torch.long) for image, count in enumerate(counts)]
    )
    index_in_image = torch.cat([torch.arange(count) for count in counts])
    copy_offset = torch.arange(num_copies)[:, None] * max_targets
    slot = (copy_offset + index_in_image[None, :]).reshape(-1).to(device)
    image = image_of_target.repeat(num_copies).to(device)
    num_queries = num_copies * max_targets
    embeddings = copy_embeddings.new_zeros(len(counts), num_queries, copy_embeddings.shape[1])
    embeddings[image, slot] = copy_embeddings
    box_logits = copy_box_logits.new_zeros(len(counts), num_queries, 4)
    box_logits[image, slot] = copy_box_logits
    return embeddings, box_logits


def _check_arguments(
    targets: Sequence[Mapping[str, Tensor]],
    num_denoising_queries: int,
    num_matching_queries: int,
    num_classes: int,
    label_embedding: Tensor,
    label_noise_ratio: float,
    box_noise_scale: float,
) -> None:
    if num_denoising_queries < 0 or num_matching_queries < 0:
        raise ValueError("num_denoising_queries and num_matching_queries must be >= 0")
    if label_embedding.dim() != 2 or label_embedding.shape[0] != num_classes:
        raise ValueError(
            f"label_embedding must be [num_classes={num_classes}, D], "
            f"got {tuple(label_embedding.shape)}"
        )
    if not 0.0 <= label_noise_ratio <= 1.0:
        raise ValueError(f"label_noise_ratio must lie in [0, 1], got {label_noise_ratio}")
    if box_noise_scale < 0:
        raise ValueError(f"box_noise_scale must be >= 0, got {box_noise_scale}")
    for image_index, target in enumerate(targets):
        labels, boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"target {image_index}: labels must be [n] and boxes [n, 4], got "
                f"{tuple(labels.shape)} and {tuple(boxes.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"target {image_index}: labels must lie in [0, {num_classes})")
