"""COCO dataset loading, augmentations, collation and the seeded data loader."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors

from focus_detr.config import TrainConfig
from focus_detr.data import (
    CocoDetection,
    RandomCropAbsoluteRange,
    build_step_dataloader,
    build_test_transforms,
    build_train_transforms,
    collate_detection,
    resize_image,
    resize_shortest_edge_size,
)
from focus_detr.io import ImageReadError

SMALL_TRAIN = TrainConfig(
    train_min_sizes=(48, 64, 80),
    train_max_size=120,
    crop_resize_sizes=(60, 80),
    crop_size_range=(30, 50),
)


def _write_png(path: Path, height: int, width: int, value: int = 90) -> None:
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)


def _image(image_id: int, height: int, width: int) -> dict:
    return {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width}


def _annotation(ann_id: int, image_id: int, category_id: int, bbox: list, **extra) -> dict:
    annotation = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox}
    return {**annotation, "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


@pytest.fixture
def coco_dir(tmp_path: Path) -> tuple[Path, Path]:
    """Three images; categories 7, 3, 1 listed unsorted; boxes to keep, clip, drop; a crowd."""
    images = [_image(5, 40, 60), _image(2, 30, 50), _image(9, 20, 20)]
    annotations = [
        _annotation(1, 5, 7, [10, 5, 20, 10]),  # kept
        _annotation(2, 5, 3, [50, 30, 20, 20]),  # clipped to x <= 60, y <= 40
        _annotation(3, 5, 1, [0, 0, 5, 5], iscrowd=1),  # crowd: excluded
        _annotation(4, 5, 1, [70, 10, 5, 5]),  # entirely outside: dropped
        _annotation(5, 2, 1, [3, 4, 0, 10]),  # zero width: dropped
        _annotation(6, 2, 1, [1, 2, 3, 4]),  # kept
        _annotation(7, 9, 3, [2, 2, 4, 4], iscrowd=1),  # image 9 has only a crowd
        _annotation(8, 42, 3, [1, 1, 4, 4]),  # unknown image id: ignored
    ]
    categories = [
        {"id": 7, "name": "seven"},
        {"id": 3, "name": "three"},
        {"id": 1, "name": "one"},
    ]
    for image in images:
        _write_png(tmp_path / image["file_name"], image["height"], image["width"])
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return tmp_path, annotation_file


def _load(coco_dir: tuple[Path, Path], **kwargs) -> CocoDetection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDetection(*coco_dir, **kwargs)


def test_category_mapping_and_back(coco_dir):
    dataset = _load(coco_dir)
    assert dataset.category_ids == [1, 3, 7]
    assert dataset.category_names == ["one", "three", "seven"]
    assert dataset.category_id_to_label == {1: 0, 3: 1, 7: 2}
    assert dataset.num_classes == 3
    assert dataset.image_ids == [2, 5, 9]  # sorted by id
    image, target = dataset[1]  # image 5
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert target["image_id"] == 5
    assert target["orig_size"] == (40, 60) and target["size"] == (40, 60)
    assert [dataset.category_ids[label] for label in target["labels"].tolist()] == [7, 3]
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0], [50.0, 30.0, 60.0, 40.0]])
    )


def test_crowd_excluded_and_filter_empty(coco_dir):
    dataset = _load(coco_dir)
    _, target = dataset[2]  # image 9: only a crowd annotation
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    filtered = _load(coco_dir, filter_empty=True)
    assert filtered.image_ids == [2, 5]
    _, target = filtered[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2.0, 4.0, 6.0]]))


def test_clipping_and_dropping_reported_in_one_warning(coco_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CocoDetection(*coco_dir)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1 clipped to the image" in message
    assert "2 dropped (empty or outside the image)" in message
    assert "1 dropped (image id not among the images)" in message


def test_explicit_category_ids_define_labels(coco_dir):
    dataset = _load(coco_dir, category_ids=[7, 1])
    assert dataset.category_ids == [7, 1]
    assert dataset.category_names == ["seven", "one"]
    _, target = dataset[1]  # image 5: category 3 is not a label any more
    assert target["labels"].tolist() == [0]
    with pytest.raises(ValueError, match="duplicates"):
        CocoDetection(*coco_dir, category_ids=[1, 1])


def test_missing_and_unreadable_images_name_the_file(coco_dir):
    image_dir, _ = coco_dir
    dataset = _load(coco_dir)
    (image_dir / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2\.png"):
        dataset[0]
    (image_dir / "5.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=r"5\.png"):
        dataset[1]
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        CocoDetection(image_dir, image_dir / "nope.json")


def test_size_mismatch_found_when_loading_is_an_error(coco_dir):
    image_dir, _ = coco_dir
    dataset = _load(coco_dir)  # the file changes after the check
    _write_png(image_dir / "9.png", 21, 20)
    with pytest.raises(ValueError, match=r"9\.png"):
        dataset[2]


def test_annotation_file_without_annotations_or_categories(tmp_path):
    _write_png(tmp_path / "1.png", 12, 16)
    annotation_file = tmp_path / "empty.json"
    annotation_file.write_text(json.dumps({"images": [_image(1, 12, 16)]}))
    dataset = CocoDetection(tmp_path, annotation_file, build_test_transforms(24, 100))
    assert dataset.category_ids == [] and len(dataset) == 1
    image, target = dataset[0]
    assert image.shape == (3, 24, 32) and target["size"] == (24, 32)
    assert target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64


@pytest.mark.parametrize(
    ("height", "width", "short", "max_size", "expected"),
    [
        (480, 640, 800, 1333, (800, 1067)),
        (427, 640, 800, 1333, (800, 1199)),
        (640, 425, 800, 1333, (1205, 800)),
        (500, 500, 800, 1333, (800, 800)),
        (1000, 200, 800, 1333, (1333, 267)),  # long side capped
        (375, 1242, 800, 1333, (402, 1333)),
        (333, 500, 600, 1000, (600, 901)),
        (7, 3, 480, 2**63 - 1, (1120, 480)),
    ],
)
def test_resize_shortest_edge_size_matches_detectron2(height, width, short, max_size, expected):
    assert resize_shortest_edge_size(height, width, short, max_size) == expected


def test_test_transform_resizes_image_and_boxes():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[64.0, 48.0, 640.0, 480.0]]), format="XYXY", canvas_size=(480, 640)
    )
    target = {"boxes": boxes, "labels": torch.tensor([3])}
    out_image, out_target = build_test_transforms(800, 1333)(image, target)
    assert out_image.shape == (3, 800, 1067)
    scale_x, scale_y = 1067 / 640, 800 / 480
    expected = torch.tensor([[64 * scale_x, 48 * scale_y, 1067.0, 800.0]])
    torch.testing.assert_close(out_target["boxes"].as_subclass(torch.Tensor), expected)


def test_resize_image_is_pil_bilinear():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=generator)
    for height, width in [(20, 29), (80, 111)]:
        array = image.permute(1, 2, 0).numpy()
        expected = np.asarray(
            PIL.Image.fromarray(array).resize((width, height), PIL.Image.BILINEAR)
        )
        out = resize_image(image, height, width)
        assert torch.equal(out, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    float_out = resize_image(image.float(), 20, 29)
    assert float_out.dtype == torch.float32 and float_out.shape == (3, 20, 29)


def _square_sample(height: int, width: int, box: tuple[int, int, int, int]):
    pixels = torch.zeros((3, height, width), dtype=torch.uint8)
    x0, y0, x1, y1 = box
    pixels[:, y0:y1, x0:x1] = 255
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(height, width)
    )
    return tv_tensors.Image(pixels), {"boxes": boxes, "labels": torch.tensor([1])}


def test_train_transforms_keep_boxes_on_the_drawn_square():
    transform = build_train_transforms(SMALL_TRAIN)
    sizes, flipped = set(), 0
    for seed in range(40):
        torch.manual_seed(seed)
        image, target = _square_sample(60, 90, (10, 20, 35, 50))
        out_image, out_target = transform(image, target)
        height, width = out_image.shape[-2:]
        sizes.add((height, width))
        assert min(height, width) in SMALL_TRAIN.train_min_sizes or max(height, width) == 120
        assert max(height, width) <= 120
        ys, xs = torch.nonzero(out_image[0] > 127, as_tuple=True)
        boxes = out_target["boxes"]
        assert len(boxes) == len(out_target["labels"])
        if len(xs) == 0:
            assert len(boxes) == 0 or (boxes[:, 2:] - boxes[:, :2]).min() < 3
            continue
        x0, y0, x1, y1 = boxes[0].tolist()
        assert abs(xs.min().item() - x0) <= 1.5 and abs(xs.max().item() + 1 - x1) <= 1.5
        assert abs(ys.min().item() - y0) <= 1.5 and abs(ys.max().item() + 1 - y1) <= 1.5
        flipped += x0 > width / 2
    assert len(sizes) > 3 and flipped > 0


def test_train_transforms_are_reproducible_from_torch_seed():
    transform = build_train_transforms(SMALL_TRAIN)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        image, target = _square_sample(60, 90, (10, 20, 35, 50))
        outputs.append(transform(image, target))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1]["boxes"], outputs[1][1]["boxes"])


def test_random_crop_absolute_range_semantics():
    crop = RandomCropAbsoluteRange(40, 70)
    for seed in range(30):
        torch.manual_seed(seed)
        big = crop(tv_tensors.Image(torch.zeros((3, 100, 120), dtype=torch.uint8)))
        assert 40 <= big.shape[1] <= 70 and 40 <= big.shape[2] <= 70
        small = crop(tv_tensors.Image(torch.zeros((3, 30, 50), dtype=torch.uint8)))
        assert small.shape[1] == 30 and 40 <= small.shape[2] <= 50


def test_crop_removes_boxes_left_outside_with_their_labels():
    image = tv_tensors.Image(torch.zeros((3, 100, 100), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 90.0, 90.0]]),
        format="XYXY",
        canvas_size=(100, 100),
    )
    target = {"boxes": boxes, "labels": torch.tensor([4, 5])}
    transform = build_train_transforms(
        TrainConfig(train_min_sizes=(50,), crop_resize_sizes=(100,), crop_size_range=(50, 50))
    )
    seen_removal = False
    for seed in range(30):
        torch.manual_seed(seed)
        _, out = transform(image, target)
        assert len(out["boxes"]) == len(out["labels"])
        widths = out["boxes"][:, 2:] - out["boxes"][:, :2]
        assert (widths > 0).all()
        seen_removal |= out["labels"].tolist() == [5]
    assert seen_removal


def test_collate_pads_bottom_right_with_zeros():
    first = torch.full((3, 4, 6), 7, dtype=torch.uint8)
    second = torch.full((3, 5, 3), 9, dtype=torch.uint8)
    targets = [{"image_id": 1}, {"image_id": 2}]
    batch, out_targets = collate_detection([(first, targets[0]), (second, targets[1])])
    assert batch.pixels.shape == (2, 3, 5, 6) and batch.pixels.dtype == torch.uint8
    assert batch.image_sizes.tolist() == [[4, 6], [5, 3]]
    assert (batch.pixels[0, :, :4, :] == 7).all() and (batch.pixels[0, :, 4:, :] == 0).all()
    assert (batch.pixels[1, :, :, :3] == 9).all() and (batch.pixels[1, :, :, 3:] == 0).all()
    assert out_targets == targets
    with pytest.raises(ValueError):
        collate_detection([])


class _RandomDataset(torch.utils.data.Dataset):
    """Each item is a random image whose size and content come from torch's RNG."""

    category_ids = (11, 22)

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        size = int(torch.randint(4, 9, (1,)))
        image = torch.randint(0, 256, (3, size, size + 1), dtype=torch.uint8)
        return image, {"image_id": index}


def _epoch(loader) -> list:
    return [(batch.pixels.clone(), [t["image_id"] for t in targets]) for batch, targets in loader]


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b, strict=True))


def test_step_dataloader_is_reproducible_and_leaves_the_callers_rng_alone():
    dataset = _RandomDataset()

    def steps(seed: int) -> list:
        loader = build_step_dataloader(
            dataset, total_batch_size=2, seed=seed, num_steps=6, num_workers=0
        )
        assert loader.dataset.category_ids == (11, 22)  # attributes reach the wrapped dataset
        return _epoch(loader)

    state = torch.get_rng_state()
    first = steps(5)
    assert torch.equal(state, torch.get_rng_state())  # caller's RNG untouched
    epoch0, epoch1 = first[:3], first[3:]
    assert sorted(i for _, ids in epoch0 for i in ids) == list(range(6))
    assert sorted(i for _, ids in epoch1 for i in ids) == list(range(6))
    assert not _same(epoch0, epoch1)  # a new order and new random content every epoch
    assert _same(first, steps(5))
    assert not _same(first, steps(6))


def test_step_sampler_same_step_images_for_any_split():
    from focus_detr.data.collate import StepBatchSampler

    def step_images(world_size: int, accumulation: int, start: int = 0) -> list[list]:
        steps: list[list] = []
        for rank in range(world_size):
            sampler = StepBatchSampler(
                10,
                total_batch_size=4,
                seed=3,
                num_steps=6 - start,
                world_size=world_size,
                rank=rank,
                grad_accumulation=accumulation,
                start_step=start,
            )
            micro = list(sampler)
            assert len(micro) == len(sampler) == (6 - start) * accumulation
            assert all(len(m) == 4 // (world_size * accumulation) for m in micro)
            for step in range(6 - start):
                if len(steps) <= step:
                    steps.append([])
                chunk = micro[step * accumulation : (step + 1) * accumulation]
                steps[step] += [sample for m in chunk for sample in m]
        return steps

    reference = step_images(1, 1)
    assert step_images(2, 1) == reference
    assert step_images(1, 2) == reference
    assert step_images(2, 2) == reference
    assert step_images(1, 4) == reference
    assert step_images(1, 1, start=3) == reference[3:]  # resuming continues the same stream
    # epochs are permutations of the dataset; step 2 straddles epochs 0 and 1
    stream = [index for step in reference for index, _ in step]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]
    sampler = StepBatchSampler(10, total_batch_size=4, seed=3, num_steps=6)
    assert sampler.step_samples(2) == reference[2]
    seeds = [seed for step in reference for _, seed in step]
    assert len(set(seeds)) == len(seeds)  # every sample of every epoch has its own seed


def test_step_sampler_rejects_uneven_splits():
    from focus_detr.data.collate import StepBatchSampler, micro_batch_size

    assert micro_batch_size(16, 2, 4) == 2
    with pytest.raises(ValueError, match="not divisible"):
        micro_batch_size(16, 3, 1)
    with pytest.raises(ValueError, match="rank"):
        StepBatchSampler(10, total_batch_size=4, seed=0, num_steps=1, world_size=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        StepBatchSampler(0, total_batch_size=4, seed=0, num_steps=1)


def test_step_dataloader_same_batches_with_workers():
    from focus_detr.data.collate import build_step_dataloader

    dataset = _RandomDataset()
    kwargs = {"total_batch_size": 4, "seed": 1, "num_steps": 3, "grad_accumulation": 2}
    in_process = _epoch(build_step_dataloader(dataset, num_workers=0, **kwargs))
    with_workers = _epoch(build_step_dataloader(dataset, num_workers=2, **kwargs))
    assert len(in_process) == 6 and _same(in_process, with_workers)
    resumed = _epoch(
        build_step_dataloader(dataset, num_workers=0, **{**kwargs, "num_steps": 1}, start_step=2)
    )
    assert _same(in_process[4:], resumed)
