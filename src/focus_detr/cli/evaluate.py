"""``focus-detr eval``: COCO box AP of a checkpoint on a COCO, YOLO or Pascal VOC dataset.

The model's classes are matched to the dataset's categories by name (else by id, see
:mod:`focus_detr.data.categories`); a dataset whose categories the model does not know, or a
split without images or objects, is an error rather than a table of zeros or -1.
"""

from __future__ import annotations

import argparse
from typing import Any

from focus_detr.cli import common
from focus_detr.data.discovery import FORMATS

NAME = "eval"
HELP = "COCO box AP of a checkpoint on a COCO, YOLO or Pascal VOC dataset"
DESCRIPTION = "Evaluate weights on a split of a dataset folder; prints the COCO table."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_source(parser, keep_ratio_help="encoder keep ratio (default: the model's)")
    common.add_backend(parser)
    parser.add_argument(
        "--data", required=True, help="dataset folder: COCO, YOLO (data.yaml) or Pascal VOC"
    )
    parser.add_argument("--format", choices=FORMATS, help="dataset format (default: detected)")
    parser.add_argument("--split", help="split name (default val2017, else val; VOC: val, test)")
    common.add_batch_size(parser)
    common.add_test_resize(parser)
    parser.add_argument("--per-class", action="store_true", help="also print per-class AP")
    parser.add_argument("--results", help="write the COCO results JSON here")
    common.add_device(parser)
    parser.add_argument(
        "--workers", type=common.non_negative_int, default=2, help="data loader processes (2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from focus_detr.data.discovery import evaluation_split
    from focus_detr.engine.distributed import init_distributed, shutdown_distributed
    from focus_detr.engine.evaluator import evaluate
    from focus_detr.predict.detector import load_model

    context = init_distributed(args.device or common.default_device())
    try:
        files = evaluation_split(args.data, args.split, args.format)
        model, categories = load_model(
            args.weights,
            preset=args.preset,
            device=context.device,
            keep_ratio=args.keep_ratio,
            runtime=args.backend,
        )
        dataset, label_to_id = _dataset(files, categories)
        evaluation = evaluate(
            model,
            dataset,
            batch_size=args.batch_size,
            device=context.device,
            min_size=args.min_size,
            max_size=args.max_size,
            num_workers=args.workers,
            category_ids=label_to_id,
            per_class=args.per_class,
            results_path=args.results,
            progress=not args.no_progress,
        )
    finally:
        shutdown_distributed(context)
    if context.is_main:
        print(f"COCO box evaluation on {dataset.source} ({evaluation.num_images} images):")
        print(evaluation.format_table())
        if args.results:
            print(f"results written to {args.results}")
    return 0


def _dataset(files: Any, categories: Any) -> tuple[Any, list[int]]:
    """The split, labelled like the model (classes matched to categories by name, else id)."""
    from focus_detr.data.categories import dataset_categories, match_model_categories
    from focus_detr.data.discovery import open_split, read_split
    from focus_detr.errors import DatasetError

    annotations, image_dir = read_split(files)
    ids, names, objects = dataset_categories(annotations)
    source = files.annotations
    if sum(objects.values()) == 0:
        raise DatasetError(
            f"{source}: the split {files.name or ''} has no annotated objects to evaluate "
            f"against (COCO AP is undefined)"
        )
    label_to_id = match_model_categories(
        categories.names, categories.ids, ids, names, source, objects
    )
    dataset = open_split(files, annotations, image_dir, category_ids=label_to_id)
    if len(dataset) == 0:
        raise DatasetError(f"{source}: the split {files.name or ''} has no usable images")
    return dataset, label_to_id
