"""The ``focus-detr train`` and ``focus-detr eval`` commands.

``train`` without ``--data`` trains the CPU preset ``focus_detr_tiny`` on the built-in synthetic
dataset (generated once under ``data/synthetic``); with ``--data ROOT`` it reads a COCO-format
folder (``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/`` images, splits
``train2017``/``val2017`` or ``train``/``val``). Run it under ``torchrun`` for several processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SYNTHETIC_ROOT = "data/synthetic"
SYNTHETIC_PRESET = "focus_detr_tiny"
COCO_PRESET = "focus_detr_r50_4scale_12ep"
SPLIT_PAIRS = (("train2017", "val2017"), ("train", "val"))


@dataclass(frozen=True)
class SplitFiles:
    """Images folder and ``instances`` annotation file of one split."""

    images: Path
    annotations: Path


def find_split(root: str | os.PathLike[str], split: str) -> SplitFiles:
    """``ROOT/<split>/`` and ``ROOT/annotations/instances_<split>.json``.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    root = Path(root)
    files = SplitFiles(root / split, root / "annotations" / f"instances_{split}.json")
    if not files.annotations.is_file():
        raise FileNotFoundError(f"no annotation file {files.annotations}")
    if not files.images.is_dir():
        raise FileNotFoundError(f"no image folder {files.images}")
    return files


def discover_splits(root: str | os.PathLike[str]) -> tuple[SplitFiles, SplitFiles | None]:
    """The training split and the validation split (None if absent) of a COCO-format folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    for train_split, val_split in SPLIT_PAIRS:
        annotations = root / "annotations" / f"instances_{train_split}.json"
        if annotations.is_file():
            train = find_split(root, train_split)
            try:
                return train, find_split(root, val_split)
            except FileNotFoundError:
                return train, None
    expected = " or ".join(f"annotations/instances_{t}.json" for t, _ in SPLIT_PAIRS)
    raise FileNotFoundError(
        f"{root} is not a COCO-format folder: expected {expected} (or give --train-images and "
        f"--train-annotations)"
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------ train


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """Register ``focus-detr train``."""
    parser = commands.add_parser(
        "train",
        help="train a model (built-in synthetic data by default) and print its COCO AP",
        description=(
            "Train Focus-DETR. Without --data: the CPU preset focus_detr_tiny on the built-in "
            "synthetic dataset. With --data ROOT: a COCO-format folder. Several processes: "
            "torchrun --nproc_per_node N -m focus_detr.cli train ..."
        ),
    )
    parser.add_argument("--preset", help=f"model preset ({SYNTHETIC_PRESET} / {COCO_PRESET})")
    parser.add_argument("--data", help="COCO-format folder (annotations/instances_<split>.json)")
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-images", help=f"{split} image folder (instead of --data)")
        parser.add_argument(f"--{split}-annotations", help=f"{split} instances JSON file")
    parser.add_argument(
        "--synthetic-root",
        default=DEFAULT_SYNTHETIC_ROOT,
        help=f"where the synthetic dataset lives ({DEFAULT_SYNTHETIC_ROOT})",
    )
    parser.add_argument("--out", help="output folder (default output/<preset>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a setting, e.g. --set train.lr=2e-4 --set model.keep_ratio=0.3",
    )
    parser.add_argument("--num-classes", type=int, help="classes of the model (default: data's)")
    parser.add_argument("--backbone-weights", help="ImageNet weights: torchvision ResNet or Swin")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--max-iters", type=int, help="stop after this many iterations")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run ``focus-detr train``; returns the exit status."""
    return _reporting_errors(_train, args)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``focus-detr eval``; returns the exit status."""
    return _reporting_errors(_eval, args)


def _reporting_errors(command: Any, args: argparse.Namespace) -> int:
    """Training failures that are not bad arguments: a message instead of a traceback."""
    from focus_detr.engine.distributed import DistributedError
    from focus_detr.engine.trainer import NonFiniteLossError

    try:
        return int(command(args))
    except (DistributedError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from focus_detr.config import apply_overrides
    from focus_detr.data.coco import CocoDetection
    from focus_detr.data.transforms import build_train_transforms
    from focus_detr.engine.trainer import train
    from focus_detr.presets import get_preset

    if args.tensorboard:
        _require_tensorboard()
    train_files, val_files, synthetic = _training_data(args)
    preset_name = args.preset or (SYNTHETIC_PRESET if synthetic else COCO_PRESET)
    preset = get_preset(preset_name)
    config = apply_overrides(preset.config, args.overrides)
    if preset.backbone_weights and not args.backbone_weights and not args.resume:
        print(
            f"note: the {preset_name} recipe starts from ImageNet weights "
            f"({preset.backbone_weights}); without --backbone-weights the backbone is random",
            file=sys.stderr,
        )
    if args.workers is not None:
        config = _replace(config, "train", num_workers=args.workers)
    train_set = CocoDetection(
        train_files.images,
        train_files.annotations,
        build_train_transforms(config.train),
        filter_empty=config.train.filter_empty,
    )
    if len(train_set) == 0:
        raise ValueError(
            f"{train_files.annotations}: no training image has a usable annotation "
            "(images without objects are left out; --set train.filter_empty=False keeps them)"
        )
    config = _replace(config, "model", num_classes=_num_classes(args, train_set.num_classes))
    val_set = None
    if val_files is not None:
        val_set = CocoDetection(
            val_files.images, val_files.annotations, category_ids=train_set.category_ids
        )
    output_dir = Path(args.out or Path("output") / preset_name)
    result = train(
        config,
        train_set,
        output_dir=output_dir,
        val_dataset=val_set,
        device=args.device,
        resume=args.resume,
        max_iters=args.max_iters,
        backbone_weights=args.backbone_weights,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    if result.final_model is None:  # not the main process
        return 0
    if result.evaluation is not None:
        split = val_files.annotations.name if val_files else ""
        print(f"COCO box evaluation on {split} after {result.iterations} iterations:")
        print(result.evaluation.format_table())
    else:
        print("no validation split: evaluation skipped")
    print(f"model written to {result.final_model}")
    return 0


def _training_data(args: argparse.Namespace) -> tuple[SplitFiles, SplitFiles | None, bool]:
    """(train split, val split or None, whether it is the built-in synthetic dataset)."""
    explicit_train = args.train_images or args.train_annotations
    if explicit_train:
        if not (args.train_images and args.train_annotations):
            raise ValueError("give both --train-images and --train-annotations")
        train = SplitFiles(Path(args.train_images), Path(args.train_annotations))
        val = None
        if args.val_images or args.val_annotations:
            if not (args.val_images and args.val_annotations):
                raise ValueError("give both --val-images and --val-annotations")
            val = SplitFiles(Path(args.val_images), Path(args.val_annotations))
        elif args.data:
            val = discover_splits(args.data)[1]
        return train, val, False
    if args.data:
        train, val = discover_splits(args.data)
        return train, val, False
    from focus_detr.data.synthetic import ensure_synthetic_dataset

    paths = ensure_synthetic_dataset(args.synthetic_root)
    train = SplitFiles(paths.train_images, paths.train_annotations)
    return train, SplitFiles(paths.val_images, paths.val_annotations), True


def _require_tensorboard() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'focus-detr[tensorboard]'"
        )


def _num_classes(args: argparse.Namespace, dataset_classes: int) -> int:
    if args.num_classes is None:
        return dataset_classes
    if args.num_classes < dataset_classes:
        raise ValueError(
            f"--num-classes {args.num_classes} is smaller than the {dataset_classes} categories "
            f"of the training set"
        )
    return int(args.num_classes)


def _replace(config: Any, section: str, **changes: Any) -> Any:
    part = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: part})


# ------------------------------------------------------------------------------------- eval


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """Register ``focus-detr eval``."""
    parser = commands.add_parser(
        "eval",
        help="COCO box AP of a checkpoint on a COCO-format dataset",
        description="Evaluate weights on a split of a COCO-format folder; prints the COCO table.",
    )
    parser.add_argument("--weights", required=True, help="checkpoint: path, .zip or URL")
    parser.add_argument("--preset", help="model preset (required for detrex releases)")
    parser.add_argument("--data", required=True, help="COCO-format folder")
    parser.add_argument("--split", help="split name (default val2017, else val)")
    parser.add_argument("--keep-ratio", type=float, help="encoder keep ratio (default: model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--min-size", type=int, help="test short side (default: recipe's)")
    parser.add_argument("--max-size", type=int, help="test long side limit (default: recipe's)")
    parser.add_argument("--per-class", action="store_true", help="also print per-class AP")
    parser.add_argument("--results", help="write the COCO results JSON here")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_eval)


def _eval(args: argparse.Namespace) -> int:
    from focus_detr.checkpoint import read_checkpoint
    from focus_detr.data.coco import CocoDetection
    from focus_detr.engine.distributed import init_distributed, shutdown_distributed
    from focus_detr.engine.evaluator import evaluate
    from focus_detr.inference import load_model

    context = init_distributed(args.device or _default_device())
    try:
        files = _evaluation_split(args.data, args.split)
        checkpoint = read_checkpoint(args.weights)
        # read once; load_model takes the state dict with its metadata as a checkpoint dict
        payload: Any = {"model": checkpoint.state_dict, **checkpoint.metadata}
        model, categories = load_model(
            payload,
            preset=args.preset,
            device=context.device,
            keep_ratio=args.keep_ratio,
        )
        dataset = CocoDetection(files.images, files.annotations, category_ids=categories.ids)
        evaluation = evaluate(
            model,
            dataset,
            batch_size=args.batch_size,
            device=context.device,
            min_size=args.min_size or "model",  # load_model set the recipe's test size
            max_size=args.max_size,
            num_workers=args.workers,
            category_ids=categories.ids,
            per_class=args.per_class,
            results_path=args.results,
            progress=not args.no_progress,
        )
    finally:
        shutdown_distributed(context)
    if context.is_main:
        print(f"COCO box evaluation on {files.annotations} ({evaluation.num_images} images):")
        print(evaluation.format_table())
        if args.results:
            print(f"results written to {args.results}")
    return 0


def _evaluation_split(root: str, split: str | None) -> SplitFiles:
    if split is not None:
        return find_split(root, split)
    for _, val_split in SPLIT_PAIRS:
        if (Path(root) / "annotations" / f"instances_{val_split}.json").is_file():
            return find_split(root, val_split)
    raise FileNotFoundError(
        f"no annotations/instances_val2017.json or instances_val.json in {root}; use --split"
    )
