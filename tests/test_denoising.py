"""Contrastive denoising queries: layout, attention mask, noise ranges, determinism."""

from __future__ import annotations

import pytest
import torch

from focus_detr.models.denoising import build_denoising_queries, denoising_attention_mask
from focus_detr.ops.boxes import box_cxcywh_to_xyxy, inverse_sigmoid
from tests.helpers import random_targets

NUM_CLASSES = 7
EMBED_DIM = 4


def _targets(counts: list[int], seed: int = 0, size_range=(0.1, 0.3)):
    return random_targets(counts, NUM_CLASSES, seed, centre_range=(0.3, 0.7), size_range=size_range)


def _build(targets, *, num_dn=20, num_matching=6, label_noise=0.5, box_noise=1.0, seed=0, **kw):
    embedding = kw.pop("embedding", None)
    if embedding is None:
        embedding = torch.arange(NUM_CLASSES * EMBED_DIM, dtype=torch.float32)
        embedding = embedding.reshape(NUM_CLASSES, EMBED_DIM) + 1
    return build_denoising_queries(
        targets,
        num_denoising_queries=num_dn,
        num_matching_queries=num_matching,
        num_classes=NUM_CLASSES,
        label_embedding=embedding,
        label_noise_ratio=label_noise,
        box_noise_scale=box_noise,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def test_returns_none_without_targets_or_budget() -> None:
    assert _build(_targets([0, 0])) is None
    assert _build([]) is None
    assert _build(_targets([2, 1]), num_dn=0) is None


def test_group_count_and_shapes() -> None:
    queries = _build(_targets([3, 5, 0]), num_dn=100, num_matching=30)
    assert queries is not None
    assert (queries.num_groups, queries.group_size) == (20, 10)  # 100 // 5 groups of 2 * 5
    assert queries.label_embeddings.shape == (3, 200, EMBED_DIM)
    assert queries.box_logits.shape == (3, 200, 4)
    assert queries.attention_mask.shape == (230, 230) and queries.attention_mask.dtype == torch.bool
    # More targets than the budget: still one group (detrex behaviour).
    many = _build(_targets([12]), num_dn=10)
    assert many is not None and (many.num_groups, many.group_size) == (1, 24)


def test_attention_mask_blocks_exactly_what_it_must() -> None:
    num_groups, group_size, num_matching = 3, 4, 5
    mask = denoising_attention_mask(num_groups, group_size, num_matching)
    num_dn = num_groups * group_size
    blocks = [range(g * group_size, (g + 1) * group_size) for g in range(num_groups)]
    matching = range(num_dn, num_dn + num_matching)
    for g, rows in enumerate(blocks):
        for h, cols in enumerate(blocks):
            expected = g != h  # a group sees only itself
            assert (
                bool(mask[rows][:, cols].all()) == expected
                and bool(mask[rows][:, cols].any()) == expected
            )
        assert not mask[rows][:, matching].any()  # denoising queries see the matching ones
        assert mask[matching][:, rows].all()  # matching queries never see denoising ones
    assert not mask[matching][:, matching].any()
    built = _build(_targets([2, 1]), num_dn=6, num_matching=num_matching)
    assert built is not None
    expected = denoising_attention_mask(built.num_groups, built.group_size, num_matching)
    assert torch.equal(built.attention_mask, expected)


def test_layout_without_noise_copies_the_targets() -> None:
    targets = _targets([3, 1])
    embedding = torch.randn(NUM_CLASSES, EMBED_DIM)
    queries = _build(targets, num_dn=9, label_noise=0.0, box_noise=0.0, embedding=embedding)
    assert queries is not None and (queries.num_groups, queries.group_size) == (3, 6)
    half = queries.group_size // 2
    for image, target in enumerate(targets):
        count = len(target["labels"])
        for group in range(queries.num_groups):
            for offset in (0, half):  # positives then negatives
                start = group * queries.group_size + offset
                slots = slice(start, start + count)
                torch.testing.assert_close(
                    queries.label_embeddings[image, slots], embedding[target["labels"]]
                )
                torch.testing.assert_close(
                    queries.box_logits[image, slots], inverse_sigmoid(target["boxes"])
                )
                filler = slice(start + count, start + half)
                assert (queries.label_embeddings[image, filler] == 0).all()
                assert (queries.box_logits[image, filler] == 0).all()


def test_box_noise_ranges_positive_inside_negative_outside() -> None:
    targets = _targets([6, 4], size_range=(0.05, 0.1))  # small central boxes: no clamping
    queries = _build(targets, num_dn=60, label_noise=0.0)
    assert queries is not None
    half = queries.group_size // 2
    positive_offsets, negative_offsets = [], []
    for image, target in enumerate(targets):
        count = len(target["labels"])
        corners = box_cxcywh_to_xyxy(target["boxes"])
        half_sizes = (target["boxes"][:, 2:] / 2).repeat(1, 2)
        for group in range(queries.num_groups):
            for offset, store in ((0, positive_offsets), (half, negative_offsets)):
                start = group * queries.group_size + offset
                noisy_cxcywh = queries.box_logits[image, start : start + count].sigmoid()
                # Negatives can cross over (x1 > x2); inverse_sigmoid then clamps the negative
                # size to 1e-3 and the corners cannot be recovered: leave those out.
                recoverable = (noisy_cxcywh[:, 2:] > 2e-3).all(dim=1)
                offsets = (box_cxcywh_to_xyxy(noisy_cxcywh) - corners).abs() / half_sizes
                store.append(offsets[recoverable])
    positive = torch.cat(positive_offsets)
    negative = torch.cat(negative_offsets)
    eps = 1e-3
    assert positive.max() <= 1 + eps  # each corner moves by less than half the box size
    assert negative.min() >= 1 - eps and negative.max() <= 2 + eps  # between a half and a full size
    assert len(negative) > 0.5 * len(positive)
    assert negative.mean() > positive.mean() + 0.8  # uniform [0,1) vs [1,2): means 0.5 and 1.5
    assert 0.4 < positive.mean() < 0.6


def test_label_flip_rate() -> None:
    targets = _targets([50])
    queries = _build(targets, num_dn=10_000, box_noise=0.0, label_noise=0.4)
    assert queries is not None
    embedding = torch.arange(NUM_CLASSES * EMBED_DIM, dtype=torch.float32)
    embedding = embedding.reshape(NUM_CLASSES, EMBED_DIM) + 1
    labels = queries.label_embeddings[0, :, 0].long() // EMBED_DIM  # invert the embedding
    original = targets[0]["labels"].repeat(2 * queries.num_groups)
    # A flipped label is uniform over all classes: it stays the same with probability 1/7.
    changed_rate = (labels != original).float().mean().item()
    expected = 0.2 * (1 - 1 / NUM_CLASSES)
    assert abs(changed_rate - expected) < 0.02
    assert torch.equal(embedding[labels], queries.label_embeddings[0])


def test_determinism_with_a_generator() -> None:
    targets = _targets([3, 2])
    first, second, other = _build(targets, seed=5), _build(targets, seed=5), _build(targets, seed=6)
    assert first is not None and second is not None and other is not None
    assert torch.equal(first.box_logits, second.box_logits)
    assert torch.equal(first.label_embeddings, second.label_embeddings)
    assert not torch.equal(first.box_logits, other.box_logits)
    torch.manual_seed(5)
    global_rng = build_denoising_queries(
        targets,
        num_denoising_queries=20,
        num_matching_queries=6,
        num_classes=NUM_CLASSES,
        label_embedding=torch.zeros(NUM_CLASSES, EMBED_DIM),
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
    )
    assert global_rng is not None and torch.equal(global_rng.box_logits, first.box_logits)


def test_matches_detrex_prepare_for_cdn() -> None:
    """Numbers produced by detrex's prepare_for_cdn (CPU, torch.manual_seed(7)) on these inputs."""
    targets = _targets([3, 1], seed=3)
    embedding = torch.arange(NUM_CLASSES * EMBED_DIM, dtype=torch.float32)
    embedding = embedding.reshape(NUM_CLASSES, EMBED_DIM) / 10
    queries = _build(targets, num_dn=7, num_matching=4, seed=7, embedding=embedding)
    assert queries is not None and (queries.num_groups, queries.group_size) == (2, 6)
    # Targets [[0, 6, 6], [5]]; class c embeds to (4c, ...) / 10; filler slots are zero.
    expected_labels = torch.tensor(
        [[0, 0, 6, 3, 6, 2, 0, 6, 6, 0, 1, 6], [5, 0, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0]]
    )
    expected_box_logits = torch.tensor(
        [
            [-0.6879244446754456, -0.5451799035072327, -0.4271589517593384, -0.4395867884159088],
            [-0.43263304233551025, -1.0466681718826294, -0.882146418094635, -0.25972089171409607],
            [-0.17550167441368103, -0.9281284213066101, -1.028058409690857, -0.8407419323921204],
            [-0.8258350491523743, -0.8067320585250854, 0.1880950927734375, -6.907755374908447],
            [-0.4514528810977936, -0.8467918038368225, -6.907755374908447, -6.907755374908447],
            [-0.5487755537033081, -0.7614019513130188, -1.547029972076416, -6.907755374908447],
            [-0.8345474004745483, -0.4250335395336151, -1.4039098024368286, -0.9002786874771118],
            [-0.6797654032707214, -0.7737393975257874, -1.4233026504516602, -1.3478142023086548],
            [-0.147378608584404, -0.6815121173858643, -1.0791757106781006, -1.444753646850586],
            [-0.5800345540046692, -0.6244356632232666, 0.5385348200798035, -6.907755374908447],
            [0.34035617113113403, -0.6803585290908813, -0.8560987710952759, -6.907755374908447],
            [0.534197986125946, -1.8130208253860474, -1.3607492446899414, -0.941750705242157],
        ]
    )
    labels = (queries.label_embeddings[..., 0] * 10 / 4).round().long()
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(queries.box_logits[0], expected_box_logits)
    assert (queries.box_logits[1, [1, 2, 4, 5, 7, 8, 10, 11]] == 0).all()


def test_gradient_reaches_the_label_embedding() -> None:
    embedding = torch.randn(NUM_CLASSES, EMBED_DIM, requires_grad=True)
    queries = _build(_targets([2, 3]), embedding=embedding)
    assert queries is not None
    queries.label_embeddings.sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_bad_arguments_raise() -> None:
    targets = _targets([2])
    with pytest.raises(ValueError, match="label_embedding"):
        _build(targets, embedding=torch.zeros(NUM_CLASSES + 1, EMBED_DIM))
    with pytest.raises(ValueError, match="label_noise_ratio"):
        _build(targets, label_noise=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        _build(targets, num_dn=-1)
    targets[0]["labels"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match="labels"):
        _build(targets)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_targets_device() -> None:
    device = torch.device("cuda")
    targets = [{k: v.to(device) for k, v in t.items()} for t in _targets([3, 1])]
    queries = build_denoising_queries(
        targets,
        num_denoising_queries=20,
        num_matching_queries=6,
        num_classes=NUM_CLASSES,
        label_embedding=torch.randn(NUM_CLASSES, EMBED_DIM, device=device),
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    assert queries is not None
    assert queries.box_logits.device.type == "cuda"
    assert queries.attention_mask.device.type == "cuda"
