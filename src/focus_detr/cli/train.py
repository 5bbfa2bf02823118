"""``focus-detr train``.

Without ``--data`` it trains the CPU preset ``focus_detr_tiny`` on the built-in synthetic
dataset (generated once under ``data/synthetic``); with ``--data ROOT`` it reads a COCO-format
folder (see :mod:`focus_detr.data.discovery`). Run it under ``torchrun`` for several processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from focus_detr.cli import common
from focus_detr.data.discovery import SplitFiles

DEFAULT_SYNTHETIC_ROOT = "data/synthetic"
SYNTHETIC_PRESET = "focus_detr_tiny"
COCO_PRESET = "focus_detr_r50_4scale_12ep"


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from focus_detr.config import apply_overrides
    from focus_detr.data.coco import CocoDetection
    from focus_detr.data.transforms import build_train_transforms
    from focus_detr.engine.run_folder import latest_run_folder
    from focus_detr.engine.trainer import train
    from focus_detr.presets import get_preset

    if args.tensorboard:
        _require_tensorboard()
    if args.resume and args.overwrite:
        raise common.UsageError("--resume continues a run and --overwrite replaces it: choose one")
    train_files, val_files, synthetic = _training_data(args)
    preset_name = args.preset or (SYNTHETIC_PRESET if synthetic else COCO_PRESET)
    preset = get_preset(preset_name)
    default_out = Path("output") / preset_name
    output_dir = Path(args.out) if args.out else default_out
    if args.resume and not args.out:
        output_dir = latest_run_folder(default_out)
    base = _resumed_config(output_dir, args.preset) if args.resume else preset.config
    config = apply_overrides(base, args.overrides)
    if preset.backbone_weights and not args.backbone_weights and not args.resume:
        print(
            f"note: the {preset_name} recipe starts from ImageNet weights "
            f"({preset.backbone_weights}); without --backbone-weights the backbone is random",
            file=sys.stderr,
        )
    if args.workers is not None:
        config = _replace(config, "train", num_workers=args.workers)
    if args.patience is not None:
        config = _replace(config, "train", patience=args.patience)
    train_set = CocoDetection(
        train_files.images,
        train_files.annotations,
        build_train_transforms(config.train),
        filter_empty=config.train.filter_empty,
    )
    if len(train_set) == 0:
        raise common.UsageError(
            f"{train_files.annotations}: no training image has a usable annotation "
            "(images without objects are left out; --set train.filter_empty=False keeps them)"
        )
    config = _replace(config, "model", num_classes=_num_classes(args, train_set.num_classes))
    val_set = None
    if val_files is not None:
        val_set = CocoDetection(
            val_files.images, val_files.annotations, category_ids=train_set.category_ids
        )
    result = train(
        config,
        train_set,
        output_dir=output_dir,
        val_dataset=val_set,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        new_folder_if_taken=not args.out,
        max_iters=args.max_iters,
        backbone_weights=args.backbone_weights,
        metadata={"preset": preset_name},
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    if result.final_model is None:  # not the main process
        return 0
    if result.evaluation is not None:
        split = val_files.annotations.name if val_files else ""
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
    return 0


def _resumed_config(output_dir: Path, preset: str | None) -> Any:
    """The configuration the run in ``output_dir`` was trained with (a resumed run keeps its
    own settings; ``--set`` changes them explicitly)."""
    from focus_detr.config import config_from_dict
    from focus_detr.engine.checkpointing import load_resume_checkpoint

    path, state = load_resume_checkpoint(output_dir)
    recorded = state.get("preset")
    if preset is not None and recorded is not None and preset != recorded:
        raise common.UsageError(
            f"{path} is a run of the preset {recorded}, not {preset}; drop --preset to resume "
            "it, or start a new run (another --out)"
        )
    return config_from_dict(state["config"])


def _training_data(args: argparse.Namespace) -> tuple[SplitFiles, SplitFiles | None, bool]:
    """(train split, val split or None, whether it is the built-in synthetic dataset)."""
    from focus_detr.data.discovery import discover_splits

    if args.train_images or args.train_annotations:
        if not (args.train_images and args.train_annotations):
            raise common.UsageError("give both --train-images and --train-annotations")
        train = SplitFiles(Path(args.train_images), Path(args.train_annotations))
        val = None
        if args.val_images or args.val_annotations:
            if not (args.val_images and args.val_annotations):
                raise common.UsageError("give both --val-images and --val-annotations")
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
        raise common.UsageError(
            "--tensorboard needs the tensorboard package: pip install 'focus-detr[tensorboard]'"
        )


def _num_classes(args: argparse.Namespace, dataset_classes: int) -> int:
    if args.num_classes is None:
        return dataset_classes
    if args.num_classes < dataset_classes:
        raise common.UsageError(
            f"--num-classes {args.num_classes} is smaller than the {dataset_classes} categories "
            f"of the training set"
        )
    return int(args.num_classes)


def _replace(config: Any, section: str, **changes: Any) -> Any:
    part = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: part})
