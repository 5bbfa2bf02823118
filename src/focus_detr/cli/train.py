"""``focus-detr train``.

Without ``--data`` it trains the CPU preset ``focus_detr_tiny`` on the built-in synthetic
dataset (generated once under ``data/synthetic``); with ``--data ROOT`` it reads a COCO, YOLO or
Pascal VOC folder (detected, or ``--format``; see :mod:`focus_detr.data.discovery`).
``--init-weights`` starts from trained weights with the classes mapped by name (see
:mod:`focus_detr.engine.initialization`). Run it under ``torchrun`` for several processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from focus_detr.cli import common
from focus_detr.data.discovery import FORMATS, SplitFiles

DEFAULT_SYNTHETIC_ROOT = "data/synthetic"
SYNTHETIC_PRESET = "focus_detr_tiny"
COCO_PRESET = "focus_detr_r50_4scale_12ep"


NAME = "train"
HELP = "train a model (built-in synthetic data by default) and print its COCO AP"
DESCRIPTION = (
    "Train Focus-DETR. Without --data: the CPU preset focus_detr_tiny on the built-in "
    "synthetic dataset. With --data ROOT: a COCO, YOLO (data.yaml) or Pascal VOC "
    "folder. Fine-tune with --init-weights. Several processes: "
    "torchrun --nproc_per_node N -m focus_detr.cli train ..."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"model preset ({SYNTHETIC_PRESET} / {COCO_PRESET})")
    parser.add_argument(
        "--data", help="dataset folder: COCO, YOLO (data.yaml) or Pascal VOC (detected)"
    )
    parser.add_argument("--format", choices=FORMATS, help="dataset format (default: detected)")
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-images", help=f"{split} image folder (instead of --data)")
        parser.add_argument(f"--{split}-annotations", help=f"{split} instances JSON file")
    parser.add_argument(
        "--synthetic-root",
        default=DEFAULT_SYNTHETIC_ROOT,
        help=f"where the synthetic dataset lives ({DEFAULT_SYNTHETIC_ROOT})",
    )
    parser.add_argument(
        "--out",
        help="output folder (default output/<preset>, or output/<preset>-N when that one "
        "holds an earlier run)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a setting, e.g. --set train.lr=2e-4 --set model.keep_ratio=0.3 "
        "--set loss.giou_weight=3 (sections model, train, loss; see focus_detr.config)",
    )
    parser.add_argument(
        "--num-classes", type=common.positive_int, help="classes of the model (default: data's)"
    )
    parser.add_argument("--backbone-weights", help="ImageNet weights: torchvision ResNet or Swin")
    parser.add_argument(
        "--init-weights",
        metavar="SOURCE",
        help="start from trained weights: a checkpoint (.pth/.zip, ours or a detrex release), "
        "a URL or a preset name (its release); classes are mapped by name, new ones start "
        "fresh. Ours also give the configuration when --preset is not given",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT (default: the latest run of the preset) with its own "
        "settings; --set changes them from the resumed iteration on",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUT holds (its checkpoints and metrics are deleted first)",
    )
    parser.add_argument(
        "--patience",
        type=common.non_negative_int,
        help="stop after this many evaluations without a better AP (sets train.patience)",
    )
    common.add_device(parser)
    parser.add_argument(
        "--max-iters", type=common.positive_int, help="stop after this many iterations"
    )
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--workers", type=common.non_negative_int, help="data loader processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from focus_detr.data.discovery import load_split
    from focus_detr.data.transforms import build_train_transforms
    from focus_detr.engine.initialization import read_init_source
    from focus_detr.engine.run_setup import plan_run, with_num_classes
    from focus_detr.engine.trainer import train

    if args.tensorboard:
        _require_tensorboard()
    if args.resume and args.overwrite:
        raise common.UsageError("--resume continues a run and --overwrite replaces it: choose one")
    train_files, val_files, synthetic = _training_data(args)
    # a resumed run continues from its own checkpoint: nothing to read (or download) then
    init = read_init_source(args.init_weights) if args.init_weights and not args.resume else None
    setup = plan_run(
        default_preset=SYNTHETIC_PRESET if synthetic else COCO_PRESET,
        preset=args.preset,
        init_weights=args.init_weights,
        init=init,
        output_dir=args.out,
        resume=args.resume,
        backbone_weights=args.backbone_weights,
        overrides=args.overrides,
        train_changes={"num_workers": args.workers, "patience": args.patience},
    )
    for note in setup.notes:
        print(f"note: {note}", file=sys.stderr)
    config = setup.config
    train_set = load_split(
        train_files, build_train_transforms(config.train), filter_empty=config.train.filter_empty
    )
    if len(train_set) == 0:
        raise common.UsageError(
            f"{train_files.annotations}: no training image has a usable annotation "
            "(images without objects are left out; --set train.filter_empty=False keeps them)"
        )
    config = with_num_classes(config, train_set.num_classes, args.num_classes)
    val_set = None
    if val_files is not None:
        val_set = load_split(
            val_files, category_ids=train_set.category_ids, class_names=train_set.category_names
        )
    result = train(
        config,
        train_set,
        output_dir=setup.output_dir,
        val_dataset=val_set,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        new_folder_if_taken=not args.out,
        max_iters=args.max_iters,
        backbone_weights=args.backbone_weights,
        init_weights=init if init is not None else args.init_weights,
        metadata={"preset": setup.preset} if setup.preset else None,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    if result.final_model is None:  # not the main process
        return 0
    _print_result(result, val_files)
    return 0


def _print_result(result: Any, val_files: SplitFiles | None) -> None:
    if result.evaluation is not None:
        split = _describe(val_files) if val_files else ""
        weights = " of the EMA weights" if result.raw_evaluation is not None else ""
        print(f"COCO box evaluation{weights} on {split} after {result.iterations} iterations:")
        print(result.evaluation.format_table())
        if result.raw_evaluation is not None:
            print(f"raw (non-EMA) weights: AP {result.raw_evaluation.AP:.4f}")
    else:
        print("no validation split: evaluation skipped")
    print(f"model written to {result.final_model}")
    if result.best_model is not None:
        print(f"best evaluated weights in {result.best_model}")


def _training_data(args: argparse.Namespace) -> tuple[SplitFiles, SplitFiles | None, bool]:
    """(train split, val split or None, whether it is the built-in synthetic dataset)."""
    from focus_detr.data.discovery import discover_splits

    if args.train_images or args.train_annotations:
        if not (args.train_images and args.train_annotations):
            raise common.UsageError("give both --train-images and --train-annotations")
        train = SplitFiles(Path(args.train_images), Path(args.train_annotations), "coco", "train")
        val = None
        if args.val_images or args.val_annotations:
            if not (args.val_images and args.val_annotations):
                raise common.UsageError("give both --val-images and --val-annotations")
            val = SplitFiles(Path(args.val_images), Path(args.val_annotations), "coco", "val")
        elif args.data:
            val = discover_splits(args.data, args.format)[1]
        return train, val, False
    if args.data:
        train, val = discover_splits(args.data, args.format)
        return train, val, False
    from focus_detr.data.synthetic import ensure_synthetic_dataset

    paths = ensure_synthetic_dataset(args.synthetic_root)
    train = SplitFiles(paths.train_images, paths.train_annotations, "coco", "train")
    return train, SplitFiles(paths.val_images, paths.val_annotations, "coco", "val"), True


def _describe(files: SplitFiles) -> str:
    name = files.annotations.name
    return name if files.format == "coco" else f"{name} ({files.name})"


def _require_tensorboard() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise common.UsageError(
            "--tensorboard needs the tensorboard package: pip install 'focus-detr[tensorboard]'"
        )
