"""Deciding what a training run is before it starts: its configuration, preset and folder.

``focus-detr train`` and the Python API share these rules:

- the configuration is ``preset``'s; else the one named by ``init_weights`` (a preset name), or
  the one its checkpoint records; else the default preset's;
- a resumed run keeps its own configuration and preset (``--set`` changes them explicitly);
- the default folder is ``output/<run name>``, and ``--resume`` without a folder continues the
  latest run of that name (``output/<name>`` or ``output/<name>-N``);
- ``--set`` overrides apply last, then the command's own shortcuts (``--workers``,
  ``--patience``) and the number of classes of the data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focus_detr.config import Config, apply_overrides, config_from_dict
from focus_detr.engine.initialization import InitSource
from focus_detr.engine.run_folder import latest_run_folder
from focus_detr.engine.training_checkpoint import load_resume_checkpoint
from focus_detr.errors import UsageError
from focus_detr.presets import get_preset, preset_names

__all__ = ["RunSetup", "plan_run", "replace_setting", "run_name", "with_num_classes"]


@dataclass(frozen=True)
class RunSetup:
    """What a run is: its configuration (before the data's class count), preset and folder.

    Attributes:
        config: the configuration, overrides applied.
        preset: the preset name recorded with the run, or None.
        output_dir: the run's folder.
        notes: what the user should know about how it was chosen (one line each).
    """

    config: Config
    preset: str | None
    output_dir: Path
    notes: tuple[str, ...] = field(default=())


def run_name(preset: str | None, init_weights: str | None, default_preset: str) -> str:
    """The default folder's name: the preset's, or ``finetune`` for ``init_weights`` from a
    checkpoint (known without reading it, so that ``--resume`` finds the run)."""
    if preset:
        return preset
    if init_weights:
        return init_weights if init_weights in preset_names() else "finetune"
    return default_preset


def plan_run(
    *,
    default_preset: str,
    preset: str | None = None,
    init_weights: str | None = None,
    init: InitSource | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    backbone_weights: str | None = None,
    overrides: Sequence[str] = (),
    train_changes: dict[str, Any] | None = None,
) -> RunSetup:
    """The configuration, preset and folder of a run (see the module's rules).

    Args:
        default_preset: the preset when nothing names one.
        init_weights: what ``--init-weights`` names (a preset or a checkpoint), and ``init``
            the checkpoint read from it (None when resuming: the run has its own weights).
        output_dir: the run's folder (default ``output/<run name>``).
        backbone_weights: ImageNet weights given (else a note says the backbone is random
            where the recipe expects them).
        overrides: ``section.key=value`` settings.
        train_changes: ``train`` settings to set after the overrides (``None`` values skipped).
    """
    default_folder = Path("output") / run_name(preset, init_weights, default_preset)
    folder = Path(output_dir) if output_dir else default_folder
    if resume:
        if not output_dir:
            folder = latest_run_folder(default_folder)
        name, config = resumed_configuration(folder, preset)
        notes: tuple[str, ...] = ()
    else:
        started = bool(backbone_weights or init_weights)
        name, config, notes = base_configuration(
            preset, init_weights, init, default_preset, started
        )
    config = apply_overrides(config, list(overrides))
    changes = {k: v for k, v in (train_changes or {}).items() if v is not None}
    if changes:
        config = replace_setting(config, "train", **changes)
    return RunSetup(config, name, folder, notes)


def base_configuration(
    preset: str | None,
    init_weights: str | None,
    init: InitSource | None,
    default_preset: str,
    started: bool,
) -> tuple[str | None, Config, tuple[str, ...]]:
    """(preset name or None, configuration before overrides, notes) of a new run."""
    name = preset
    if name is None and init is not None and init_weights in preset_names():
        name = init_weights
    if name is None and init is not None and init.config is not None:
        note = f"the configuration (model, train, loss) is {init.label}'s"
        return init.preset, config_from_dict(init.config), (note,)
    name = name or default_preset
    recipe = get_preset(name)
    notes: tuple[str, ...] = ()
    if recipe.backbone_weights and not started:
        notes = (
            f"the {name} recipe starts from ImageNet weights ({recipe.backbone_weights}); "
            "without --backbone-weights the backbone is random",
        )
    return name, recipe.config, notes


def resumed_configuration(output_dir: Path, preset: str | None) -> tuple[str | None, Config]:
    """The preset and configuration the run in ``output_dir`` was trained with.

    Raises:
        UsageError: ``preset`` differs from the run's own.
    """
    path, state = load_resume_checkpoint(output_dir)
    recorded = state.get("preset")
    if preset is not None and recorded is not None and preset != recorded:
        raise UsageError(
            f"{path} is a run of the preset {recorded}, not {preset}; drop --preset to resume "
            "it, or start a new run (another --out)"
        )
    return recorded or preset, config_from_dict(state["config"])


def with_num_classes(config: Config, dataset_classes: int, requested: int | None) -> Config:
    """``config`` with the model's class count: the data's, or ``requested`` (not fewer).

    Raises:
        UsageError: ``requested`` is below the data's class count.
    """
    if requested is not None and requested < dataset_classes:
        raise UsageError(
            f"--num-classes {requested} is smaller than the {dataset_classes} categories "
            f"of the training set"
        )
    return replace_setting(config, "model", num_classes=requested or dataset_classes)


def replace_setting(config: Config, section: str, **changes: Any) -> Config:
    """``config`` with ``changes`` in one section (validated like any configuration)."""
    part = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: part})
