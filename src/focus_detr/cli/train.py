"""``focus-detr train``.

Without ``--data`` it trains the CPU preset ``focus_detr_tiny`` on the built-in synthetic
dataset (generated once under ``data/synthetic``); with ``--data ROOT`` it reads a COCO, YOLO or
Pascal VOC folder (detected, or ``--format``; see :mod:`focus_detr.data.discovery`).
``--init-weights`` starts from trained weights with the classes mapped by name (see
:mod:`focus_detr.engine.initialization`). Run it under ``torchrun`` for several processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from focus_detr.cli import common
from focus_detr.data.discovery import FORMATS, SplitFiles

DEFAULT_SYNTHETIC_ROOT = "data/synthetic"
SYNTHETIC_PRESET = "focus_detr_tiny"
COCO_PRESET = "focus_detr_r50_4scale_12ep"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model (built-in synthetic data by default) and print its COCO AP",
        description=(
            "Train Focus-DETR. Without --data: the CPU preset focus_detr_tiny on the built-in "
            "synthetic dataset. With --data ROOT: a COCO, YOLO (data.yaml) or Pascal VOC "
            "folder. Fine-tune with --init-weights. Several processes: "
            "torchrun --nproc_per_node N -m focus_detr.cli train ..."
        ),
    )
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from focus_detr.config import apply_overrides
    from focus_detr.data.discovery import load_split
    from focus_detr.data.transforms import build_train_transforms
    from focus_detr.engine.initialization import read_init_source
    from focus_detr.engine.run_folder import latest_run_folder
    from focus_detr.engine.trainer import train

    if args.tensorboard:
        _require_tensorboard()
    if args.resume and args.overwrite:
        raise common.UsageError("--resume continues a run and --overwrite replaces it: choose one")
    train_files, val_files, synthetic = _training_data(args)
    # a resumed run continues from its own checkpoint: nothing to read (or download) then
    init = read_init_source(args.init_weights) if args.init_weights and not args.resume else None
    preset_name, base = _base_config(args, init, synthetic)
    default_out = Path("output") / _run_name(args, synthetic)
    output_dir = Path(args.out) if args.out else default_out
    if args.resume and not args.out:
        output_dir = latest_run_folder(default_out)
    if args.resume:
        preset_name, base = _resumed_config(output_dir, args.preset)
    config = apply_overrides(base, args.overrides)
    if args.workers is not None:
        config = _replace(config, "train", num_workers=args.workers)
    if args.patience is not None:
        config = _replace(config, "train", patience=args.patience)
    train_set = load_split(
        train_files, build_train_transforms(config.train), filter_empty=config.train.filter_empty
    )
    if len(train_set) == 0:
        raise common.UsageError(
            f"{train_files.annotations}: no training image has a usable annotation "
            "(images without objects are left out; --set train.filter_empty=False keeps them)"
        )
    config = _replace(config, "model", num_classes=_num_classes(args, train_set.num_classes))
    val_set = None
    if val_files is not None:
        val_set = load_split(
            val_files, category_ids=train_set.category_ids, class_names=train_set.category_names
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
        init_weights=init if init is not None else args.init_weights,
        metadata={"preset": preset_name} if preset_name else None,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    if result.final_model is None:  # not the main process
        return 0
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
    return 0


def _run_name(args: argparse.Namespace, synthetic: bool) -> str:
    """The default output folder's name: the preset's, or ``finetune`` for ``--init-weights``
    from a checkpoint (known without reading it, so that ``--resume`` finds the run)."""
    from focus_detr.presets import preset_names

    if args.preset:
        return str(args.preset)
    if args.init_weights:
        return args.init_weights if args.init_weights in preset_names() else "finetune"
    return SYNTHETIC_PRESET if synthetic else COCO_PRESET


def _base_config(args: argparse.Namespace, init: Any, synthetic: bool) -> tuple[str | None, Any]:
    """(preset name or None, configuration before ``--set``): ``--preset``; else the preset
    named by ``--init-weights`` or the configuration its checkpoint records; else the default
    preset."""
    from focus_detr.config import config_from_dict
    from focus_detr.presets import get_preset, preset_names

    name = args.preset
    if name is None and init is not None and args.init_weights in preset_names():
        name = args.init_weights
    if name is None and init is not None and init.config is not None:
        print(f"note: the configuration (model, train, loss) is {init.label}'s", file=sys.stderr)
        return init.preset, config_from_dict(init.config)
    name = name or (SYNTHETIC_PRESET if synthetic else COCO_PRESET)
    preset = get_preset(name)
    started = args.backbone_weights or args.resume or args.init_weights
    if preset.backbone_weights and not started:
        print(
            f"note: the {name} recipe starts from ImageNet weights "
            f"({preset.backbone_weights}); without --backbone-weights the backbone is random",
            file=sys.stderr,
        )
    return name, preset.config


def _resumed_config(output_dir: Path, preset: str | None) -> tuple[str | None, Any]:
    """The preset and configuration the run in ``output_dir`` was trained with (a resumed run
    keeps its own settings; ``--set`` changes them explicitly)."""
    from focus_detr.config import config_from_dict
    from focus_detr.engine.training_checkpoint import load_resume_checkpoint

    path, state = load_resume_checkpoint(output_dir)
    recorded = state.get("preset")
    if preset is not None and recorded is not None and preset != recorded:
        raise common.UsageError(
            f"{path} is a run of the preset {recorded}, not {preset}; drop --preset to resume "
            "it, or start a new run (another --out)"
        )
    return recorded or preset, config_from_dict(state["config"])


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
