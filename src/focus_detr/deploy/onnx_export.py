"""Export a Focus-DETR model to ONNX: the whole detector, shape-generic, with its metadata.

The graph (:class:`DeploymentGraph`) takes padded uint8 images and their sizes, normalises,
runs backbone, Focus encoder (token budgets, cascade and padding masks computed in the graph
from the sizes) and decoder, and returns the top detections of every image; the contract is
in :mod:`focus_detr.deploy.onnx_contract`. It is traced with ``torch.export`` and translated by
PyTorch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``). The model's export mode
(:mod:`focus_detr.models.export_mode`) keeps the trace free of the example's sizes; the
constraint check of ``torch.export`` then proves that no shape was frozen for any input
between ``input_min_side`` and ``MAX_IMAGE_SIDE``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focus_detr import __version__
from focus_detr.config import MAX_IMAGE_SIDE, Config, ConfigError
from focus_detr.deploy.onnx_contract import (
    FOREGROUND_OUTPUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    DeploymentMetadata,
    category_entries,
)
from focus_detr.errors import MissingDependencyError
from focus_detr.io import atomic_path
from focus_detr.models.deformable_attention import MultiScaleDeformableAttention
from focus_detr.models.detector import FocusDETR
from focus_detr.models.postprocess import top_detections
from focus_detr.ops.deformable_attention_dispatch import EXPORT_BACKEND, EXPORTABLE_BACKENDS
from focus_detr.structures import FocusDETROutput, ImageBatch

#: ONNX opset of PyTorch's own ONNX functions (others are converted from it).
DEFAULT_OPSET = 18
#: GridSample needs opset 16; the ONNX standard stops at 23 for now.
OPSET_RANGE = (16, 23)
MAX_BATCH = 1024
#: 512 / 32 = 16 positions at Swin's last stage: more than one of its largest windows (12)
EXAMPLE_MIN_SIDE = 512


class DeploymentGraph(nn.Module):
    """``(images, image_sizes) -> (boxes, scores, labels, valid[, foreground_logits])``.

    Args:
        model: the detector (its ``config`` fixes the keep ratio, cascade and detections).
        foreground_scores: also return every token's foreground logit.
    """

    def __init__(self, model: FocusDETR, *, foreground_scores: bool = False) -> None:
        super().__init__()
        self.model = model
        self.foreground_scores = foreground_scores

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        raw = self.model(ImageBatch(images, image_sizes), raw=True)
        if not isinstance(raw, FocusDETROutput):
            raise TypeError("the detector must return its raw outputs for raw=True")
        found = top_detections(
            raw.pred_logits,
            raw.pred_boxes,
            image_sizes,
            self.model.config.num_detections,
            raw.query_mask,
        )
        outputs: tuple[Tensor, ...] = (found.boxes, found.scores, found.labels, found.valid)
        if self.foreground_scores:
            outputs += (raw.foreground_logits,)
        return outputs


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file (weights inside).
        seconds: wall time of the export (tracing, translation, checks, writing).
        size_bytes: file size.
        opset: ONNX opset.
        metadata: the metadata written into the file.
    """

    path: Path
    seconds: float
    size_bytes: int
    opset: int
    metadata: DeploymentMetadata


def export_onnx(
    model: FocusDETR,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    preset: str | None = None,
    config: Config | None = None,
    opset: int = DEFAULT_OPSET,
    static_size: tuple[int, int] | None = None,
    foreground_scores: bool = False,
    deformable_attention: str = EXPORT_BACKEND,
) -> ExportReport:
    """Export ``model`` (float32, eval mode) to an ONNX file at ``path``.

    Args:
        model: the detector; its configuration (keep ratio, cascade, test resize) is baked in.
        path: output file (``.onnx``).
        class_names / category_ids: class names and dataset ids by label (default: ``class i``
            and ``1..C``), written to the metadata.
        preset: preset name to record (so that ``predict`` needs no ``--preset``).
        config: the full stored configuration to record; its model section is replaced by
            ``model.config`` (default: ``Config(model=model.config)``).
        opset: ONNX opset, 16..23.
        static_size: ``(H, W)``: a graph for this canvas only (constant shapes and token
            widths; TensorRT-friendly). Default: dynamic batch, height and width.
        foreground_scores: add the ``foreground_logits`` output.
        deformable_attention: ``grid_sample`` (ONNX ``GridSample``) or ``corner_gather``
            (``GatherElements`` only).

    Raises:
        MissingDependencyError: ``onnx`` or ``onnxscript`` is not installed.
        ConfigError: (a ``ValueError``) a bad opset, static size or backend.
        ValueError: a model that is not float32.
    """
    _check_arguments(model, opset, static_size, deformable_attention)
    onnx = _import_onnx()
    started = time.perf_counter()
    graph = DeploymentGraph(model, foreground_scores=foreground_scores)
    min_side = input_min_side(model)
    example = _example_inputs(min_side, static_size, model.device)
    outputs = OUTPUT_NAMES + ((FOREGROUND_OUTPUT,) if foreground_scores else ())
    with _eval_mode(model), _deformable_backend(model, deformable_attention):
        program = trace_to_onnx(
            graph,
            example,
            dynamic_shapes=_dynamic_shapes(min_side, static_size),
            opset=opset,
            input_names=INPUT_NAMES,
            output_names=outputs,
            unproven_shape_facts=bool(
                getattr(model.backbone, "export_has_unproven_shape_facts", False)
            ),
        )
    names = list(class_names or [f"class {i}" for i in range(model.num_classes)])
    metadata = DeploymentMetadata(
        config=Config(
            model=model.config,
            train=config.train if config is not None else Config().train,
            loss=config.loss if config is not None else Config().loss,
        ),
        categories=category_entries(names, category_ids),
        preset=preset or "",
        input_min_side=min_side,
        static_size=static_size,
        level_strides=tuple(model.neck.strides),
        outputs=outputs,
        deformable_attention=deformable_attention,
        version=__version__,
    )
    program.model.metadata_props.update(metadata.to_props())
    path = Path(path)
    # written beside, checked, then renamed: an interrupted or failed export leaves any
    # earlier file at `path` as it was
    with atomic_path(path) as partial:
        program.save(str(partial), external_data=False)
        onnx.checker.check_model(str(partial))
    return ExportReport(
        path=path,
        seconds=time.perf_counter() - started,
        size_bytes=path.stat().st_size,
        opset=opset,
        metadata=metadata,
    )


def trace_to_onnx(
    module: nn.Module,
    example: tuple[Tensor, ...],
    *,
    dynamic_shapes: Sequence[dict[int, Any]],
    opset: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
    unproven_shape_facts: bool = False,
) -> Any:
    """``torch.export`` of ``module`` for every shape ``dynamic_shapes`` allows, translated to
    an ``onnx`` program (``torch.onnx.ONNXProgram``).

    By default the export fails when the trace depends on a shape fact that the tracer cannot
    prove for the whole range: the graph would be specialised to the example's sizes.
    ``unproven_shape_facts=True`` keeps such facts as run-time checks instead, for modules
    whose facts are known to only choose PyTorch memory layouts (``rows * cols != cols`` of a
    Swin window grid, whose sizes are nested floor divisions of the input size); the ONNX
    translation, whose ops have no layouts, drops the checks. Their tests run the graphs at
    sizes where the facts are false (a single window).
    """
    with _lean_tracing(), torch.no_grad():
        exported = torch.export.export(
            module,
            example,
            dynamic_shapes=tuple(dynamic_shapes),
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=unproven_shape_facts,
        )
    program = torch.onnx.export(
        exported,
        example,
        dynamo=True,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        # the onnxscript optimizer made ONNX Runtime 1.7x slower here (docs/deploy.md), and
        # takes as long as the translation; ONNX Runtime optimises the graph when it loads it
        optimize=False,
        verbose=False,
    )
    if program is None:  # only the legacy exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    return program


def input_min_side(model: FocusDETR) -> int:
    """Smallest canvas side an exported graph takes: every level at least 2 tokens wide.

    (``torch.export`` traces sizes 0 and 1 apart; the runtime pads smaller inputs, which
    changes no result.)
    """
    return 2 * int(model.neck.strides[-1])


def _check_arguments(
    model: FocusDETR,
    opset: int,
    static_size: tuple[int, int] | None,
    deformable_attention: str,
) -> None:
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ConfigError(
            f"opset must be in {list(OPSET_RANGE)} (GridSample needs 16), got {opset}"
        )
    if deformable_attention not in EXPORTABLE_BACKENDS:
        raise ConfigError(
            f"deformable_attention must be one of {EXPORTABLE_BACKENDS}, got "
            f"{deformable_attention!r}"
        )
    if model.dtype != torch.float32:
        raise ValueError(f"export a float32 model (model.float()), not {model.dtype}")
    if static_size is not None:
        smallest = input_min_side(model)
        if not all(smallest <= side <= MAX_IMAGE_SIDE for side in static_size):
            raise ConfigError(
                f"static size sides must be in [{smallest}, {MAX_IMAGE_SIDE}], got {static_size}"
            )


def _import_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (PyTorch's ONNX exporter needs it)
    except ImportError as error:
        raise MissingDependencyError(
            f"ONNX export needs the onnx extra ({error.name} is missing): "
            'pip install "focus-detr[onnx]"'
        ) from None
    return onnx


def _example_inputs(
    min_side: int, static_size: tuple[int, int] | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Two images of different sizes (values do not matter: the trace keeps no value).

    Dynamic exports trace canvases of at least ``EXAMPLE_MIN_SIDE`` pixels, so that the
    example puts every Swin stage at two windows or more (a size of 1 would be specialised).
    """
    side = max(2 * min_side, EXAMPLE_MIN_SIDE)
    height, width = static_size or (side + 37, side + 101)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=generator)
    sizes = torch.tensor([[height, width], [max(1, height - 50), max(1, width - 90)]])
    return images.to(device), sizes.to(device)


def _dynamic_shapes(min_side: int, static_size: tuple[int, int] | None) -> tuple[dict, dict]:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=MAX_BATCH)
    if static_size is not None:
        return {0: batch}, {0: batch}
    height = dim("height", min=min_side, max=MAX_IMAGE_SIDE)
    width = dim("width", min=min_side, max=MAX_IMAGE_SIDE)
    return {0: batch, 2: height, 3: width}, {0: batch}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _deformable_backend(model: nn.Module, backend: str) -> Iterator[None]:
    """Every deformable attention of ``model`` runs ``backend`` inside the block."""
    layers = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    saved = [layer.backend for layer in layers]
    for layer in layers:
        layer.backend = backend
    try:
        yield
    finally:
        for layer, previous in zip(layers, saved):
            layer.backend = previous


@contextlib.contextmanager
def _lean_tracing() -> Iterator[None]:
    """Skip recording a Python stack trace per traced node: the export is faster (where
    this torch has the switch: 2.14 does, 2.11 does not)."""
    import torch.fx.config as fx_config

    if not hasattr(fx_config, "do_not_emit_stack_traces"):
        yield
        return
    saved = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = saved
