"""What an exported Focus-DETR ONNX graph takes, returns and records (docs/deploy.md).

Inputs:

- ``images``: ``uint8 [B, 3, H, W]`` RGB, each image in the top-left corner of the canvas; the
  rest (padding) may hold anything, the graph zeroes it after normalising.
- ``image_sizes``: ``int64 [B, 2]`` (height, width) of each image, ``1 <= h <= H``,
  ``1 <= w <= W``.

``B``, ``H`` and ``W`` are dynamic (``H, W >= input_min_side``) unless the graph was exported
for one static canvas. Outputs, ``K`` = the model's ``num_detections`` (fewer for tiny inputs):

- ``boxes``: ``float32 [B, K, 4]`` xyxy in each image's pixels, clipped to it;
- ``scores``: ``float32 [B, K]`` sigmoid scores, best first;
- ``labels``: ``int64 [B, K]`` class indices (``class_names`` in the metadata);
- ``valid``: ``bool [B, K]``, False where the entry is not a detection;
- ``foreground_logits`` (optional): ``float32 [B, N]`` foreground score of every token, levels
  of strides ``level_strides`` finest first, each ``ceil(H / s) x ceil(W / s)`` row-major.

Metadata (``metadata_props``, all strings) is :class:`DeploymentMetadata`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focus_detr.config import Config, ConfigError, config_from_dict, config_to_dict
from focus_detr.weights.checkpoint import CheckpointError

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "valid")
FOREGROUND_OUTPUT = "foreground_logits"
FORMAT_VERSION = "1"


class ExportedModelError(CheckpointError):
    """An exported file (ONNX, OpenVINO) is not a Focus-DETR export this package can run, or
    cannot do what was asked of it (a weights file that cannot be used, as for checkpoints:
    the CLI prints it as one ``error:`` line)."""


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``: runtimes raise long multi-line errors."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass(frozen=True)
class DeploymentMetadata:
    """What an exported graph records about its model (its ``metadata_props``).

    Attributes:
        config: the full configuration (model, train, loss); ``config.model`` is exactly what
            the graph computes (keep ratio and cascade included) and holds the test resize.
        categories: ``{"id", "name"}`` of every class, by label.
        preset: the preset the weights belong to, or "" when unknown.
        input_min_side: smallest ``H`` and ``W`` the graph accepts (smaller images are padded).
        static_size: the one ``(H, W)`` canvas of a static graph, or None.
        level_strides: pixel stride of each token level (for ``foreground_logits``).
        outputs: output names, in order.
        deformable_attention: the deformable attention backend in the graph.
        version: focus-detr version that wrote the file.
    """

    config: Config
    categories: tuple[dict[str, Any], ...]
    preset: str
    input_min_side: int
    static_size: tuple[int, int] | None
    level_strides: tuple[int, ...]
    outputs: tuple[str, ...]
    deformable_attention: str
    version: str

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (string keys and values)."""
        model = self.config.model
        return {
            "focus_detr_format": FORMAT_VERSION,
            "focus_detr_version": self.version,
            "preset": self.preset,
            "class_names": json.dumps([c["name"] for c in self.categories]),
            "categories": json.dumps(list(self.categories)),
            "test_min_size": str(model.test_min_size),
            "test_max_size": str(model.test_max_size),
            "keep_ratio": repr(model.keep_ratio),
            "cascade": json.dumps(list(model.cascade)),
            "config": json.dumps(config_to_dict(self.config)),
            "input_min_side": str(self.input_min_side),
            "static_size": "" if self.static_size is None else "x".join(map(str, self.static_size)),
            "level_strides": json.dumps(list(self.level_strides)),
            "outputs": ",".join(self.outputs),
            "deformable_attention": self.deformable_attention,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> DeploymentMetadata:
        """Read what :meth:`to_props` wrote.

        Raises:
            ExportedModelError: the entries are missing or unreadable (naming ``source``).
        """
        if props.get("focus_detr_format") != FORMAT_VERSION or "config" not in props:
            raise ExportedModelError(
                f"{source} was not exported by focus-detr (its metadata has no Focus-DETR "
                f"configuration); export it with `focus-detr export`"
            )
        try:
            config = config_from_dict(json.loads(props["config"]))
            categories = tuple(
                {"id": int(c["id"]), "name": str(c["name"])}
                for c in json.loads(props["categories"])
            )
            static = props.get("static_size", "")
            return cls(
                config=config,
                categories=categories,
                preset=props.get("preset", ""),
                input_min_side=int(props["input_min_side"]),
                static_size=_size(static) if static else None,
                level_strides=tuple(int(s) for s in json.loads(props["level_strides"])),
                outputs=tuple(props["outputs"].split(",")),
                deformable_attention=props.get("deformable_attention", ""),
                version=props.get("focus_detr_version", ""),
            )
        except (KeyError, ValueError, TypeError, ConfigError) as error:
            raise ExportedModelError(
                f"{source} has unreadable Focus-DETR metadata: {error}"
            ) from None


def category_entries(
    names: Sequence[str], ids: Sequence[int] | None = None
) -> tuple[dict[str, Any], ...]:
    """``{"id", "name"}`` entries (ids default to 1, 2, ...)."""
    ids = list(ids) if ids is not None else list(range(1, len(names) + 1))
    return tuple({"id": int(i), "name": str(n)} for i, n in zip(ids, names))


def _size(text: str) -> tuple[int, int]:
    height, width = text.split("x")
    return int(height), int(width)
