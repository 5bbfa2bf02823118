"""Initialise a model from trained weights for fine-tuning on other classes.

Every parameter (and buffer) whose name and shape match is loaded. The class-dependent ones
(the decoder's class heads, the two-stage class head, which also scores tokens in the encoder,
and the denoising label embedding) follow the model's classes instead: a class whose name
matches a class of the checkpoint (case-insensitive, spaces and underscores alike) gets that
class's rows copied; the others keep the model's own values. On a model fresh from
:func:`~focus_detr.build_model` those are what a new head starts from (``FocusDETR``'s
initialisation), so nothing here draws random numbers.

Class names of the checkpoint: those it records (``categories``, written by ``focus-detr
train``); detrex releases record none and are COCO's 80 classes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from focus_detr.weights.checkpoint import CheckpointError, read_checkpoint
from focus_detr.weights.detrex import describe_architecture, detrex_to_native, is_detrex_layout
from focus_detr.weights.download import download

#: Parameters with one row per class.
CLASS_DEPENDENT = re.compile(
    r"^(class_heads\.\d+\.(weight|bias)|two_stage_class_head\.(weight|bias)"
    r"|denoising_label_embedding\.weight)$"
)


@dataclass(frozen=True)
class InitSource:
    """Weights to initialise from, read once (:func:`read_init_source`).

    Attributes:
        label: what was asked for (preset name, path or URL), for logs and run metadata.
        state_dict: the tensors, in this package's key layout.
        class_names: the checkpoint's classes in label order (None when unknown).
        config: the configuration our checkpoints record (``{"model": ..., ...}``), or None.
        preset: the preset our checkpoints record, or None.
    """

    label: str
    state_dict: dict[str, Tensor]
    class_names: tuple[str, ...] | None
    config: dict[str, Any] | None
    preset: str | None = None


@dataclass
class InitReport:
    """What :func:`initialize_from` did.

    Attributes:
        source: the weights' label.
        loaded: entries copied whole (name and shape match).
        class_dependent: class-dependent entries whose rows were mapped by class name.
        copied_classes: ``(model class, checkpoint class)`` pairs whose rows were copied.
        new_classes: model classes the checkpoint does not have (rows left as initialised).
        reinitialized: entries the checkpoint has with another shape (left as initialised).
        absent: model entries the checkpoint lacks (left as initialised).
        unused: checkpoint entries the model has no place for.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    class_dependent: list[str] = field(default_factory=list)
    copied_classes: list[tuple[str, str]] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the log."""
        copied = [a if a == b else f"{a} (= {b})" for a, b in self.copied_classes]
        lines = [
            f"initialised from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.class_dependent)} class-dependent ones mapped by class name",
            f"  classes copied by name ({len(copied)}): {_listing(copied)}",
            f"  new classes ({len(self.new_classes)}): {_listing(self.new_classes)}",
            f"  parameters re-initialised ({len(self.reinitialized)}): "
            f"{_listing(self.reinitialized)}",
            f"  parameters absent from the checkpoint ({len(self.absent)}): "
            f"{_listing(self.absent)}",
        ]
        if self.unused:
            lines.append(
                f"  checkpoint entries not used ({len(self.unused)}): {_listing(self.unused)}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the run's metadata (``metrics.jsonl``)."""
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "copied_classes": [list(pair) for pair in self.copied_classes],
            "new_classes": list(self.new_classes),
            "reinitialized": list(self.reinitialized),
            "absent": list(self.absent),
            "unused": len(self.unused),
        }


def _listing(items: Sequence[str], limit: int = 12) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def read_init_source(
    source: str | os.PathLike[str] | Mapping[str, Any] | InitSource,
) -> InitSource:
    """Read the weights named by ``source``.

    Args:
        source: a checkpoint (detrex release ``.pth`` / ``.zip`` or one written by
            ``focus-detr train``), a URL (downloaded once into the cache), the name of a preset
            (its released weights, downloaded and cached), or a loaded checkpoint dict.

    Raises:
        CheckpointError: unreadable, or a preset without released weights.
    """
    if isinstance(source, InitSource):
        return source
    label = "<dict>" if isinstance(source, Mapping) else str(source)
    location: Any = source
    if isinstance(source, str) and "://" not in source and not os.path.exists(source):
        location = _preset_weights(source) or source
    checkpoint = read_checkpoint(location)
    state = checkpoint.state_dict
    if is_detrex_layout(state):
        layers = {int(m.group(1)) for k in state if (m := _DECODER_LAYER.match(k))}
        state, conversion = detrex_to_native(state, len(layers))
        if conversion.aliases_conflicting:
            raise CheckpointError(
                f"{label}: entries that detrex stores as one shared tensor differ: "
                + "; ".join(conversion.aliases_conflicting[:10])
            )
    config = checkpoint.metadata.get("config")
    preset = checkpoint.metadata.get("preset")
    return InitSource(
        label=label,
        state_dict=state,
        class_names=_source_class_names(state, checkpoint.metadata.get("categories")),
        config=dict(config) if isinstance(config, Mapping) else None,
        preset=preset if isinstance(preset, str) else None,
    )


_DECODER_LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.")


def _preset_weights(name: str) -> str | None:
    """The cached release file of preset ``name``, downloaded first if needed; None if
    ``name`` is not a preset."""
    from focus_detr.presets import get_preset, preset_names

    if name not in preset_names():
        return None
    url = get_preset(name).weights_url
    if url is None:
        raise CheckpointError(f"preset {name} has no released weights to initialise from")
    return str(download(url))


def _source_class_names(state: Mapping[str, Tensor], categories: object) -> tuple[str, ...] | None:
    from focus_detr.data.coco_metadata import COCO_CLASS_NAMES

    head = state.get("two_stage_class_head.weight", state.get("class_heads.0.weight"))
    if head is None:
        return None
    num_classes = int(head.shape[0])
    if isinstance(categories, Sequence) and len(categories) == num_classes:
        names = [c.get("name") if isinstance(c, Mapping) else None for c in categories]
        if all(isinstance(n, str) for n in names):
            return tuple(str(n) for n in names)
    if num_classes == len(COCO_CLASS_NAMES):  # detrex releases: COCO's classes
        return tuple(COCO_CLASS_NAMES)
    return None


def initialize_from(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any] | InitSource,
    *,
    class_names: Sequence[str] | None = None,
) -> InitReport:
    """Initialise ``model`` (freshly built) from trained weights, mapping classes by name.

    Args:
        model: a :class:`~focus_detr.models.FocusDETR`, usually fresh from ``build_model``:
            what the checkpoint does not provide keeps the model's values.
        source: see :func:`read_init_source`.
        class_names: the model's classes in label order (e.g. the training set's
            ``category_names``). By default the checkpoint's own, which requires the same
            number of classes.

    Returns:
        An :class:`InitReport` (``report.summary()`` for the log).

    Raises:
        CheckpointError: the checkpoint has no tensor that fits the model.
        ValueError: ``class_names`` does not have one name per class of the model.
    """
    weights = read_init_source(source)
    expected = model.state_dict()
    names = _model_class_names(model, weights, class_names)
    report = InitReport(source=weights.label)
    rows = _row_mapping(names, weights.class_names, report)
    values: dict[str, Tensor] = {}
    for key, target in expected.items():
        value = weights.state_dict.get(key)
        if CLASS_DEPENDENT.match(key):
            mapped = _mapped_rows(target, value, rows)
            if mapped is None:
                (report.absent if value is None else report.reinitialized).append(key)
            else:
                values[key] = mapped
                report.class_dependent.append(key)
        elif value is None:
            if not key.endswith("num_batches_tracked"):
                report.absent.append(key)
        elif value.shape != target.shape:
            report.reinitialized.append(
                f"{key} (checkpoint {tuple(value.shape)}, model {tuple(target.shape)})"
            )
        else:
            values[key] = value
            report.loaded.append(key)
    report.unused = sorted(set(weights.state_dict) - set(expected))
    if not report.loaded:
        raise CheckpointError(
            f"{weights.label} has no tensor that fits the model.\n  checkpoint looks like: "
            f"{describe_architecture(weights.state_dict)}\n  model is:              "
            f"{describe_architecture(expected)}"
        )
    model.load_state_dict(values, strict=False)
    return report


def _model_class_names(
    model: nn.Module, weights: InitSource, class_names: Sequence[str] | None
) -> list[str] | None:
    num_classes = int(model.two_stage_class_head.weight.shape[0])  # type: ignore[union-attr,index]
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but the model has {num_classes} classes"
            )
        return [str(n) for n in class_names]
    head = weights.state_dict.get("two_stage_class_head.weight")
    if head is not None and int(head.shape[0]) != num_classes:
        raise ValueError(
            f"the model has {num_classes} classes and {weights.label} {int(head.shape[0])}: "
            "pass class_names to map them by name"
        )
    return None  # the checkpoint's classes, in its order


def _row_mapping(
    names: list[str] | None, source_names: tuple[str, ...] | None, report: InitReport
) -> dict[int, int] | None:
    """Model label -> checkpoint row (None: every row, same order)."""
    from focus_detr.data.categories import name_key

    if names is None:  # the checkpoint's classes: every row in place
        report.copied_classes = [(n, n) for n in source_names or ()]
        return None
    if source_names is None:
        report.new_classes = list(names)
        return {}
    row_of: dict[str, int] = {}
    for row, name in enumerate(source_names):
        row_of.setdefault(name_key(name), row)
    rows = {}
    for label, name in enumerate(names):
        found = row_of.get(name_key(name))
        if found is None:
            report.new_classes.append(name)
        else:
            rows[label] = found
            report.copied_classes.append((name, source_names[found]))
    return rows


def _mapped_rows(
    target: Tensor, value: Tensor | None, rows: dict[int, int] | None
) -> Tensor | None:
    """``target`` with the mapped rows taken from ``value``; None if ``value`` cannot serve."""
    if value is None or value.shape[1:] != target.shape[1:]:
        return None
    if rows is None:
        return value if value.shape == target.shape else None
    result = target.detach().clone()
    if rows:
        labels = torch.tensor(list(rows), dtype=torch.long)
        sources = torch.tensor(list(rows.values()), dtype=torch.long)
        if int(sources.max()) >= value.shape[0]:
            return None
        result[labels.to(result.device)] = value[sources].to(result.device, result.dtype)
    return result
