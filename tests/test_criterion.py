"""Set criterion: loss names, perfect predictions, empty images, masks, weights, targets."""

from __future__ import annotations

import pytest
import torch

from focus_detr.losses import (
    SetCriterion,
    average_num_boxes,
    default_weight_dict,
    prepare_targets,
    sigmoid_focal_loss,
)
from focus_detr.ops.boxes import box_cxcywh_to_xyxy
from focus_detr.structures import DenoisingOutput, EncoderTrace, FocusDETROutput, TokenLayout
from tests.helpers import random_targets, token_layout

NUM_CLASSES = 5
STRIDES = (8, 16, 32, 64)


def _token_layout(batch_size: int, height: int, width: int) -> TokenLayout:
    return token_layout([(-(-height // s), -(-width // s)) for s in STRIDES], STRIDES, batch_size)


def _make_targets(counts: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return random_targets(counts, NUM_CLASSES, seed, size_range=(0.1, 0.4))


def _make_outputs(
    targets: list[dict[str, torch.Tensor]],
    *,
    num_layers: int = 3,
    num_queries: int = 10,
    seed: int = 1,
    num_groups: int | None = 2,
    image_size: tuple[int, int] = (64, 96),
) -> FocusDETROutput:
    """Random raw outputs of the right shapes (denoising groups built for ``targets``)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(targets)
    tokens = _token_layout(batch_size, *image_size)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 0.5 + 0.25

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    denoising = None
    max_targets = max(len(t["labels"]) for t in targets)
    if num_groups is not None and max_targets > 0:
        group_size = 2 * max_targets
        num_dn = num_groups * group_size
        denoising = DenoisingOutput(
            logits=randn(num_layers, batch_size, num_dn, NUM_CLASSES),
            boxes=rand(num_layers, batch_size, num_dn, 4),
            num_groups=num_groups,
            group_size=group_size,
        )
    unused = torch.zeros(0)
    return FocusDETROutput(
        logits=randn(num_layers, batch_size, num_queries, NUM_CLASSES),
        boxes=rand(num_layers, batch_size, num_queries, 4),
        query_mask=torch.ones(batch_size, num_queries, dtype=torch.bool),
        proposal_logits=randn(batch_size, num_queries, NUM_CLASSES),
        proposal_boxes=rand(batch_size, num_queries, 4),
        proposal_token_indices=unused,
        foreground_logits=randn(batch_size, tokens.num_tokens),
        tokens=tokens,
        image_sizes=torch.tensor([list(image_size)] * batch_size),
        encoder=EncoderTrace(
            token_indices=[],
            token_counts=unused,
            category_scores=[],
            dual_attention_indices=[],
            dual_attention_counts=unused,
        ),
        initial_references=unused,
        decoder_references=unused,
        decoder_last_hidden=unused,
        proposal_hidden=unused,
        memory=unused,
        denoising=denoising,
    )


def _expected_names(num_layers: int) -> set[str]:
    suffixes = ["", "_enc", "_dn"]
    suffixes += [f"_{i}" for i in range(num_layers - 1)]
    suffixes += [f"_dn_{i}" for i in range(num_layers - 1)]
    names = {base + s for s in suffixes for base in ("loss_class", "loss_bbox", "loss_giou")}
    return names | {"select_loss"}


def _make_perfect(outputs: FocusDETROutput, targets, correct_class: bool = True) -> None:
    """Write each target into query ``2 * j`` of every layer (and its denoising positives)."""
    for image, target in enumerate(targets):
        slots = torch.arange(len(target["labels"])) * 2
        labels = target["labels"] if correct_class else (target["labels"] + 1) % NUM_CLASSES
        for logits, boxes in (
            (outputs.logits[:, image], outputs.boxes[:, image]),
            (outputs.proposal_logits[None, image], outputs.proposal_boxes[None, image]),
        ):
            logits.fill_(-8.0)
            logits[:, slots, labels] = 8.0
            boxes[:, slots] = target["boxes"]
        if outputs.denoising is not None:
            dn = outputs.denoising
            for group in range(dn.num_groups):
                positives = group * dn.group_size + torch.arange(len(target["labels"]))
                dn.boxes[:, image, positives] = target["boxes"]


@pytest.mark.parametrize("num_layers", [1, 3, 6])
def test_loss_names_are_complete(num_layers: int) -> None:
    targets = _make_targets([3, 1])
    criterion = SetCriterion(NUM_CLASSES, num_decoder_layers=num_layers)
    losses = criterion(_make_outputs(targets, num_layers=num_layers), targets)
    assert set(losses) == _expected_names(num_layers)
    without_denoising = criterion(
        _make_outputs(targets, num_layers=num_layers, num_groups=None), targets
    )
    assert set(without_denoising) == set(losses)
    assert all(without_denoising[k].item() == 0 for k in without_denoising if "_dn" in k)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert set(losses) <= set(criterion.weight_dict)


def test_perfect_predictions_have_zero_box_losses() -> None:
    targets = _make_targets([3, 2])
    criterion = SetCriterion(NUM_CLASSES)
    perfect = _make_outputs(targets)
    _make_perfect(perfect, targets)
    losses = criterion(perfect, targets)
    for name, value in losses.items():
        # GIoU keeps detrex's +1e-6 in its denominators: 1 - IoU ~ 1e-6 / box area, not 0
        tolerance = 1e-4 if name.startswith("loss_giou") else 1e-6
        if name.startswith(("loss_bbox", "loss_giou")):
            assert value.abs().item() < tolerance, name
    wrong = _make_outputs(targets)
    _make_perfect(wrong, targets, correct_class=False)
    wrong_losses = criterion(wrong, targets)
    for suffix in ("", "_0", "_1", "_enc"):
        assert losses["loss_class" + suffix] < 0.1 * wrong_losses["loss_class" + suffix]


def test_class_loss_is_focal_sum_over_num_boxes() -> None:
    targets = _make_targets([2, 3])
    outputs = _make_outputs(targets, num_layers=1)
    criterion = SetCriterion(NUM_CLASSES)
    matches = criterion.matcher(outputs.pred_logits, outputs.pred_boxes, targets)
    one_hot = torch.zeros_like(outputs.pred_logits)
    for image, (queries, target_indices) in enumerate(matches):
        one_hot[image, queries, targets[image]["labels"][target_indices]] = 1
    expected = sigmoid_focal_loss(outputs.pred_logits, one_hot).sum() / 5
    torch.testing.assert_close(criterion(outputs, targets)["loss_class"], expected)


def test_images_without_objects_give_finite_losses() -> None:
    criterion = SetCriterion(NUM_CLASSES)
    for counts in ([0, 2], [0, 0]):
        targets = _make_targets(counts)
        outputs = _make_outputs(targets)
        outputs.logits.requires_grad_(True)
        outputs.foreground_logits.requires_grad_(True)
        losses = criterion(outputs, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        total = criterion.weighted_total(losses)
        total.backward()
        assert torch.isfinite(outputs.logits.grad).all()
        assert torch.isfinite(outputs.foreground_logits.grad).all()
        assert outputs.foreground_logits.grad.abs().sum() > 0
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_class"].item() > 0  # every query is pushed towards background


def test_masked_queries_contribute_nothing() -> None:
    targets = _make_targets([2, 3])
    outputs = _make_outputs(targets)
    outputs.query_mask[0, 6:] = False
    outputs.query_mask[1, :2] = False
    criterion = SetCriterion(NUM_CLASSES)
    reference = criterion(outputs, targets)
    outputs.logits[:, 0, 6:] = 50.0
    outputs.proposal_logits[1, :2] = 50.0
    outputs.boxes[:, 1, :2] = 0.5
    outputs.logits.requires_grad_(True)
    changed = criterion(outputs, targets)
    for name in reference:
        torch.testing.assert_close(changed[name], reference[name])
    changed["loss_class"].backward()
    assert outputs.logits.grad[-1, 0, 6:].abs().max() == 0
    assert outputs.logits.grad[-1, 0, :6].abs().max() > 0


def test_denoising_losses_use_the_fixed_assignment() -> None:
    targets = _make_targets([3, 1])
    outputs = _make_outputs(targets, num_groups=3)
    dn = outputs.denoising
    assert dn is not None
    for image, target in enumerate(targets):
        for group in range(dn.num_groups):
            positives = group * dn.group_size + torch.arange(len(target["labels"]))
            dn.boxes[-1, image, positives] = target["boxes"]
            dn.logits[-1, image, positives] = -8.0
            dn.logits[-1, image, positives, target["labels"]] = 8.0
    losses = SetCriterion(NUM_CLASSES)(outputs, targets)
    # GIoU keeps detrex's +1e-6 in its denominators: 1 - IoU ~ 1e-6 / box area, not 0
    assert losses["loss_bbox_dn"].abs() < 1e-6 and losses["loss_giou_dn"].abs() < 1e-4
    assert losses["loss_bbox_dn_0"] > 0.01
    # Negatives and filler slots are background: their random logits cost class loss.
    focal = sigmoid_focal_loss(dn.logits[-1], torch.zeros_like(dn.logits[-1]))
    for image, target in enumerate(targets):
        for group in range(dn.num_groups):
            positives = group * dn.group_size + torch.arange(len(target["labels"]))
            focal[image, positives] = 0
    expected_background = focal.sum() / (4 * dn.num_groups)
    assert losses["loss_class_dn"] >= expected_background
    assert losses["loss_class_dn"] < expected_background + 1e-3


def test_weighted_total_uses_the_table() -> None:
    targets = _make_targets([2])
    criterion = SetCriterion(NUM_CLASSES, num_decoder_layers=3)
    losses = criterion(_make_outputs(targets), targets)
    expected = sum(criterion.weight_dict[k] * v for k, v in losses.items())
    torch.testing.assert_close(criterion.weighted_total(losses), expected)
    manual = (
        losses["loss_class"]
        + 5 * losses["loss_bbox_1"]
        + 2 * losses["loss_giou_enc"]
        + 5 * losses["loss_bbox_dn_0"]
        + 1.5 * losses["select_loss"]
    )
    subset = {
        k: losses[k]
        for k in ("loss_class", "loss_bbox_1", "loss_giou_enc", "loss_bbox_dn_0", "select_loss")
    }
    torch.testing.assert_close(criterion.weighted_total(subset), manual)
    with pytest.raises(KeyError, match="loss_mystery"):
        criterion.weighted_total({**losses, "loss_mystery": torch.tensor(1.0)})


def test_default_weight_table() -> None:
    table = default_weight_dict(6)
    assert len(table) == 3 * (3 + 5 + 5) + 1
    assert table["select_loss"] == 1.5
    for suffix in ("", "_enc", "_dn", "_0", "_4", "_dn_0", "_dn_4"):
        assert table["loss_class" + suffix] == 1.0
        assert table["loss_bbox" + suffix] == 5.0
        assert table["loss_giou" + suffix] == 2.0
    assert "loss_class_5" not in table
    assert SetCriterion(NUM_CLASSES, foreground_weight=3.0).weight_dict["select_loss"] == 3.0


def test_matches_detrex_reference_numbers() -> None:
    """Values computed by the detrex criterion (FOCUS_DETRCriterion) on these exact inputs."""
    targets = _make_targets([3, 1], seed=10)
    outputs = _make_outputs(targets, num_layers=2, seed=11)
    losses = SetCriterion(NUM_CLASSES, num_decoder_layers=2)(outputs, targets)
    reference = {
        "loss_class": 6.846610069274902,
        "loss_bbox": 0.5434520244598389,
        "loss_giou": 0.7816944122314453,
        "loss_class_0": 5.810733795166016,
        "loss_class_enc": 5.472797393798828,
        "loss_bbox_enc": 0.4085116684436798,
        "loss_class_dn": 3.5365025997161865,
        "loss_bbox_dn_0": 0.5383804440498352,
        "loss_giou_dn": 0.8610985279083252,
        "select_loss": 3.4756622314453125,
    }
    for name, value in reference.items():
        # rtol: detrex's foreground focal loss takes log(sigmoid) where ours uses the stable
        # logits form (float32 rounding differences ~1e-7 relative).
        torch.testing.assert_close(losses[name].item(), value, rtol=1e-6, atol=1e-7, msg=name)


def test_bad_targets_raise() -> None:
    targets = _make_targets([2, 1])
    outputs = _make_outputs(targets)
    criterion = SetCriterion(NUM_CLASSES)
    with pytest.raises(ValueError, match="targets"):
        criterion(outputs, targets[:1])
    targets[1]["labels"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match="labels"):
        criterion(outputs, targets)


def test_prepare_targets_converts_pixels_to_normalised_cxcywh() -> None:
    raw = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int32)},
    ]
    prepared = prepare_targets(raw, torch.tensor([[100, 200], [50, 50]]), dtype=torch.float64)
    expected = torch.tensor([[30 / 200, 40 / 100, 40 / 200, 40 / 100]], dtype=torch.float64)
    torch.testing.assert_close(prepared[0]["boxes"], expected)
    assert prepared[0]["labels"].dtype == torch.int64
    assert prepared[1]["boxes"].shape == (0, 4) and prepared[1]["labels"].dtype == torch.int64
    pixels = box_cxcywh_to_xyxy(prepared[0]["boxes"]) * torch.tensor([200, 100, 200, 100])
    torch.testing.assert_close(pixels, raw[0]["boxes"].double())
    with pytest.raises(ValueError):
        prepare_targets(raw, [[100, 200]])
    with pytest.raises(ValueError):
        prepare_targets([{"boxes": torch.zeros(2, 3), "labels": torch.zeros(2)}], [[10, 10]])


def test_num_boxes_without_distributed() -> None:
    assert average_num_boxes(_make_targets([3, 4]), torch.device("cpu")) == 7.0
    assert average_num_boxes(_make_targets([0, 0]), torch.device("cpu")) == 1.0


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        targets = _make_targets([3, 1, 0, 4], seed=20)[2 * rank : 2 * rank + 2]
        outputs = _split_outputs(_make_outputs(_make_targets([3, 1, 0, 4], seed=20), seed=21), rank)
        criterion = SetCriterion(NUM_CLASSES)
        losses = criterion(outputs, targets)
        num_boxes = average_num_boxes(targets, torch.device("cpu"))
        torch.save({"losses": losses, "num_boxes": num_boxes}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _split_outputs(outputs: FocusDETROutput, rank: int) -> FocusDETROutput:
    """Images ``2 * rank`` and ``2 * rank + 1`` of a batch of 4."""
    half = slice(2 * rank, 2 * rank + 2)
    dn = outputs.denoising
    assert dn is not None
    return FocusDETROutput(
        logits=outputs.logits[:, half],
        boxes=outputs.boxes[:, half],
        query_mask=outputs.query_mask[half],
        proposal_logits=outputs.proposal_logits[half],
        proposal_boxes=outputs.proposal_boxes[half],
        proposal_token_indices=outputs.proposal_token_indices,
        foreground_logits=outputs.foreground_logits[half],
        tokens=_token_layout(2, 64, 96),
        image_sizes=outputs.image_sizes[half],
        encoder=outputs.encoder,
        initial_references=outputs.initial_references,
        decoder_references=outputs.decoder_references,
        decoder_last_hidden=outputs.decoder_last_hidden,
        proposal_hidden=outputs.proposal_hidden,
        memory=outputs.memory,
        denoising=DenoisingOutput(
            dn.logits[:, half], dn.boxes[:, half], dn.num_groups, dn.group_size
        ),
    )


@pytest.mark.slow  # spawning two processes takes ~10 s on 2 CPU cores
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path) -> None:
    """num_boxes is averaged over processes, so averaged DDP losses equal the full-batch loss."""
    torch.multiprocessing.spawn(
        _distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert results[0]["num_boxes"] == results[1]["num_boxes"] == 4.0  # (4 + 4) / 2
    targets = _make_targets([3, 1, 0, 4], seed=20)
    full = SetCriterion(NUM_CLASSES)(_make_outputs(targets, seed=21), targets)
    for name, value in full.items():
        averaged = (results[0]["losses"][name] + results[1]["losses"][name]) / 2
        torch.testing.assert_close(averaged, value, msg=name)
