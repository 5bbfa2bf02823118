"""Hungarian matcher: batched = per image, permutation equivariance, masks, optimality."""

from __future__ import annotations

import itertools

import pytest
import torch

from focus_detr.losses.matcher import HungarianMatcher


def _random_problem(seed: int, counts: list[int], num_queries: int = 20, num_classes: int = 6):
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(counts)
    logits = torch.randn(batch_size, num_queries, num_classes, generator=generator)
    boxes = torch.rand(batch_size, num_queries, 4, generator=generator) * 0.5 + 0.1
    targets = [
        {
            "labels": torch.randint(0, num_classes, (count,), generator=generator),
            "boxes": torch.rand(count, 4, generator=generator) * 0.5 + 0.1,
        }
        for count in counts
    ]
    return logits, boxes, targets


def _assert_same_matches(first, second) -> None:
    assert len(first) == len(second)
    for (query_a, target_a), (query_b, target_b) in zip(first, second):
        assert torch.equal(query_a, query_b)
        assert torch.equal(target_a, target_b)


def test_batched_equals_per_image_calls() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(0, [4, 0, 7, 1])
    batched = matcher(logits, boxes, targets)
    for image in range(len(targets)):
        single = matcher(logits[image : image + 1], boxes[image : image + 1], [targets[image]])
        _assert_same_matches([batched[image]], single)
    for (queries, target_indices), target in zip(batched, targets):
        assert queries.dtype == torch.int64 and target_indices.dtype == torch.int64
        assert len(queries) == len(target["labels"])
        assert len(set(queries.tolist())) == len(queries)
        assert sorted(target_indices.tolist()) == list(range(len(target["labels"])))


def test_permuting_targets_permutes_matches() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(1, [6])
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = [{key: value[permutation] for key, value in targets[0].items()}]
    original_queries, original_targets = matcher(logits, boxes, targets)[0]
    new_queries, new_targets = matcher(logits, boxes, permuted)[0]
    original = dict(zip(original_queries.tolist(), original_targets.tolist()))
    # New target k is old target permutation[k]: each query keeps the same object.
    new = {q: int(permutation[t]) for q, t in zip(new_queries.tolist(), new_targets.tolist())}
    assert new == original


def test_empty_targets_give_empty_indices() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(2, [0, 0])
    for queries, target_indices in matcher(logits, boxes, targets):
        assert queries.shape == (0,) and target_indices.shape == (0,)
        assert queries.dtype == torch.int64


def test_masked_queries_are_never_matched() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(3, [5, 8], num_queries=12)
    # Make the masked queries the perfect answers, so that an unmasked matcher would pick them.
    query_mask = torch.ones(2, 12, dtype=torch.bool)
    query_mask[0, :5] = False
    query_mask[1, 6:] = False
    boxes[0, :5] = targets[0]["boxes"]
    matches = matcher(logits, boxes, targets, query_mask)
    assert not set(matches[0][0].tolist()) & set(range(5))
    assert len(matches[0][0]) == 5
    # Image 1 has 8 targets but only 6 valid queries: 6 pairs, all on valid queries.
    assert set(matches[1][0].tolist()) == set(range(6))
    assert len(matches[1][1]) == 6
    all_valid = matcher(logits, boxes, targets, torch.ones(2, 12, dtype=torch.bool))
    _assert_same_matches(all_valid, matcher(logits, boxes, targets))


def test_matching_is_optimal_on_a_small_case() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(4, [3], num_queries=5)
    cost = matcher.cost_matrix(logits, boxes, targets)[0]
    queries, target_indices = matcher(logits, boxes, targets)[0]
    found = cost[queries, target_indices].sum()
    best = min(
        sum(cost[q, t] for t, q in enumerate(choice))
        for choice in itertools.permutations(range(5), 3)
    )
    torch.testing.assert_close(found, best)


def test_perfect_predictions_are_matched_to_their_targets() -> None:
    matcher = HungarianMatcher()
    _, _, targets = _random_problem(5, [4], num_queries=10)
    boxes = torch.rand(1, 10, 4) * 0.05 + 0.9  # far corner, away from the targets
    logits = torch.full((1, 10, 6), -5.0)
    slots = torch.tensor([7, 2, 9, 0])
    boxes[0, slots] = targets[0]["boxes"]
    logits[0, slots, targets[0]["labels"]] = 5.0
    queries, target_indices = matcher(logits, boxes, targets)[0]
    assert dict(zip(queries.tolist(), target_indices.tolist())) == {7: 0, 2: 1, 9: 2, 0: 3}


def test_cost_is_the_documented_weighted_sum() -> None:
    logits, boxes, targets = _random_problem(6, [2, 3])
    class_only = HungarianMatcher(1.0, 0.0, 0.0).cost_matrix(logits, boxes, targets)
    bbox_only = HungarianMatcher(0.0, 1.0, 0.0).cost_matrix(logits, boxes, targets)
    giou_only = HungarianMatcher(0.0, 0.0, 1.0).cost_matrix(logits, boxes, targets)
    combined = HungarianMatcher(2.0, 5.0, 2.0).cost_matrix(logits, boxes, targets)
    torch.testing.assert_close(combined, 2 * class_only + 5 * bbox_only + 2 * giou_only)
    expected_l1 = (boxes[1, 3] - targets[1]["boxes"][0]).abs().sum()
    torch.testing.assert_close(bbox_only[1, 3, 2], expected_l1)
    prob = logits[0, 4, targets[0]["labels"][1]].sigmoid()
    positive = 0.25 * (1 - prob) ** 2 * -torch.log(prob + 1e-8)
    negative = 0.75 * prob**2 * -torch.log(1 - prob + 1e-8)
    torch.testing.assert_close(class_only[0, 4, 1], positive - negative)


def test_non_finite_costs_raise() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(7, [2])
    boxes[0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        matcher(logits, boxes, targets)
    # A NaN on a masked query is harmless: that query is never considered.
    query_mask = torch.ones(1, 20, dtype=torch.bool)
    query_mask[0, 3] = False
    queries, _ = matcher(logits, boxes, targets, query_mask)[0]
    assert 3 not in queries.tolist()


def test_bad_inputs_raise_value_error() -> None:
    matcher = HungarianMatcher()
    logits, boxes, targets = _random_problem(8, [2, 1])
    with pytest.raises(ValueError, match="targets"):
        matcher(logits, boxes, targets[:1])
    with pytest.raises(ValueError, match="boxes"):
        matcher(logits, boxes[..., :3], targets)
    with pytest.raises(ValueError, match="query_mask"):
        matcher(logits, boxes, targets, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        HungarianMatcher(0.0, 0.0, 0.0)


def test_runs_without_autograd() -> None:
    logits, boxes, targets = _random_problem(9, [3])
    logits.requires_grad_(True)
    matches = HungarianMatcher()(logits, boxes, targets)
    assert not matches[0][0].requires_grad
