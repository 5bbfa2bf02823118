"""Run an exported graph with OpenVINO: a :class:`~focus_detr.predict.Detector`.

:class:`OpenVinoDetector` is what :func:`focus_detr.load_model` returns for an OpenVINO IR
(``.xml`` + ``.bin``, written by ``focus-detr export --format openvino``) or, with
``runtime="openvino"``, for the ONNX file of ``focus-detr export``. OpenVINO compiles the graph
for the CPU with every shape dynamic, as the file declares it (batch, height, width, and the
token widths computed in the graph).

The compile settings (:data:`COMPILE_SETTINGS`) hold the choices that matter here (measured in
docs/deploy.md):

- float32 inference. On CPUs with AMX or AVX-512 BF16 OpenVINO computes in bfloat16 by
  default, which moves the scores of the quick-start model by 2e-2 and fails the accuracy
  contract of docs/deploy.md (every top-50 detection within 2e-3); in float32 they agree with
  PyTorch to 2e-6.
- the ``LATENCY`` hint: one inference stream with every thread on one request, which is what
  one image and a padded batch (one request each) want. ``THROUGHPUT`` gives each of several
  streams a share of the threads, and one request then runs on one share: 1.8x slower here.
- no CPU pinning: on a machine shared with other work, threads pinned to busy cores wait for
  them (11% slower on a loaded 2-core machine; the same time on a quiet one).

OpenVINO's CPU plugin has no float64: the graph's one float64 computation, each image's token
budget (``int(valid_tokens * keep_ratio) + 1`` and the cascade, float64 to reproduce detrex's
rounding), runs in float32. For the zoo's keep ratio (0.5) that changes no budget; for others
it can add a token at some sizes, and opening such a graph warns
(:func:`float32_budget_difference`).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from focus_detr.deploy.exported import ExportedDetector
from focus_detr.deploy.onnx_contract import DeploymentMetadata, ExportedModelError
from focus_detr.errors import MissingDependencyError
from focus_detr.models.focus_encoder import token_budgets
from focus_detr.structures import Capabilities

__all__ = [
    "COMPILE_SETTINGS",
    "METADATA_SECTION",
    "OpenVinoDetector",
    "deployment_props",
    "import_openvino",
    "read_openvino_model",
]

#: CPU plugin properties of every compiled graph (``threads`` adds ``INFERENCE_NUM_THREADS``).
COMPILE_SETTINGS: dict[str, str] = {
    "INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY",
    "ENABLE_CPU_PINNING": "NO",
}
#: rt_info section of an IR that holds the Focus-DETR metadata (written at conversion).
METADATA_SECTION = "focus_detr"
#: where OpenVINO's ONNX reader puts an ONNX file's ``metadata_props``.
_ONNX_METADATA_SECTION = "framework"
#: token counts checked by :func:`float32_budget_difference`: a 4096 x 4096 canvas of the
#: zoo's levels (strides 8 to 64) has 349,524 tokens
CHECKED_TOKEN_COUNTS = 350_000


class OpenVinoDetector(ExportedDetector):
    """An exported Focus-DETR graph compiled by OpenVINO for the CPU. Open one with
    :meth:`open`.

    It detects as :class:`~focus_detr.deploy.exported.ExportedDetector` describes.

    Attributes:
        compiled: the ``openvino.CompiledModel``.
    """

    capabilities: ClassVar[Capabilities] = Capabilities("openvino")

    def __init__(self, compiled: Any, metadata: DeploymentMetadata, source: str) -> None:
        super().__init__(metadata, source)
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._request_lock = threading.Lock()  # one request: calls from threads take turns
        self._output_names = [output.get_any_name() for output in compiled.outputs]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> OpenVinoDetector:
        """Read ``path`` (an IR ``.xml`` beside its ``.bin``, or an exported ONNX file) and
        compile it for the CPU.

        Args:
            device: ``cpu``; any other device is a warning, and the CPU (this package runs
                OpenVINO on CPUs only).
            threads: inference threads (default: OpenVINO's, one per physical core).
            properties: CPU plugin properties that replace or add to :data:`COMPILE_SETTINGS`
                (e.g. ``{"PERFORMANCE_HINT": "THROUGHPUT"}``).

        Raises:
            FileNotFoundError: no such file.
            MissingDependencyError: openvino is not installed.
            ExportedModelError: the file is not a Focus-DETR export OpenVINO can run.
        """
        ov = import_openvino()
        source = str(path)
        if torch.device(device).type != "cpu":
            warnings.warn(
                f"OpenVINO runs on the CPU here, not {device}; running on the CPU", stacklevel=3
            )
        model = read_openvino_model(source)
        metadata = cls.checked_metadata(
            deployment_props(model), [port.get_any_name() for port in model.inputs], source
        )
        _warn_about_float32_budgets(metadata.config.model.keep_ratio, metadata.config.model.cascade)
        settings = dict(COMPILE_SETTINGS)
        if threads is not None:
            settings["INFERENCE_NUM_THREADS"] = str(threads)
        settings.update(properties or {})
        try:
            compiled = ov.Core().compile_model(model, "CPU", settings)
        except Exception as error:  # OpenVINO raises its own types
            raise ExportedModelError(f"OpenVINO cannot compile {source}: {reason(error)}") from None
        return cls(compiled, metadata, source)

    def run_graph(self, pixels: np.ndarray, image_sizes: np.ndarray) -> Mapping[str, np.ndarray]:
        with self._request_lock:
            results = self._request.infer({"images": pixels, "image_sizes": image_sizes})
            return {name: results[index] for index, name in enumerate(self._output_names)}


@functools.lru_cache(maxsize=8)
def float32_budget_difference(
    keep_ratio: float, cascade: Sequence[float], max_count: int = CHECKED_TOKEN_COUNTS
) -> int | None:
    """The smallest number of valid tokens (up to ``max_count``) whose per-layer budgets come
    out differently in float32 (OpenVINO) than in float64 (PyTorch, ONNX Runtime), or None."""
    counts = np.arange(1, max_count + 1)
    exact = token_budgets(torch.from_numpy(counts), keep_ratio, tuple(cascade)).numpy()
    valid = counts.astype(np.float32)
    kept = np.minimum(np.floor(valid * np.float32(keep_ratio)) + 1, valid)
    single = np.floor(np.asarray(cascade, dtype=np.float32)[None, :] * kept[:, None])
    differ = np.nonzero((exact != single).any(axis=1))[0]
    return int(counts[differ[0]]) if len(differ) else None


def _warn_about_float32_budgets(keep_ratio: float, cascade: Sequence[float]) -> None:
    first = float32_budget_difference(keep_ratio, tuple(cascade))
    if first is not None:
        warnings.warn(
            f"OpenVINO computes the token budgets in float32: with keep ratio {keep_ratio:g} "
            f"and cascade {tuple(cascade)}, some images (the first of {first} valid tokens) "
            "get one token more per layer than in PyTorch; keep ratio 0.5 is exact",
            stacklevel=3,
        )


def read_openvino_model(path: str | os.PathLike[str]) -> Any:
    """The ``openvino.Model`` of an IR ``.xml`` (weights in the ``.bin`` beside it) or of an
    ONNX file: an IR is XML text, anything else goes to OpenVINO's ONNX reader.

    The reader is chosen by the file's first byte rather than by letting ``Core.read_model``
    try every frontend: that tries TensorFlow's too, which prints parser errors for a file that
    is neither.

    Raises:
        FileNotFoundError: no such file.
        MissingDependencyError: openvino is not installed.
        ExportedModelError: OpenVINO cannot read it (one line).
    """
    import_openvino()
    from openvino.frontend import FrontEndManager

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no such model file: {source}")
    with open(source, "rb") as handle:
        start = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    framework = "ir" if start.startswith(b"<") else "onnx"
    frontend = FrontEndManager().load_by_framework(framework)
    try:
        return frontend.convert(frontend.load(str(source)))
    except Exception as error:  # OpenVINO raises its own types (GeneralFailure, ...)
        raise ExportedModelError(
            f"{source} is not a usable OpenVINO IR or ONNX model: {reason(error)}"
        ) from None


def deployment_props(model: Any) -> dict[str, str]:
    """The Focus-DETR metadata entries of an ``openvino.Model``: the IR's own section, or the
    ONNX file's ``metadata_props`` (empty when it has neither)."""
    for section in (METADATA_SECTION, _ONNX_METADATA_SECTION):
        if not model.has_rt_info([section]):
            continue
        entries = model.get_rt_info()[section]  # an RTMap (no .get); a section is a dict
        if isinstance(entries, Mapping) and entries:
            return {key: value.astype(str) for key, value in entries.items()}
    return {}


def reason(error: BaseException) -> str:
    """The line of an OpenVINO error that says what went wrong (its messages start with the
    C++ source locations of the checks that failed)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    located = ("Exception from ", "Check '", "FrontEnd API failed")
    informative = [line for line in lines if not line.startswith(located)]
    return (informative or lines or [type(error).__name__])[0]


def import_openvino() -> Any:
    """The ``openvino`` module, or an error that names the extra to install."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(
            'OpenVINO is not installed (the openvino package): pip install "focus-detr[openvino]"'
        ) from None
    return openvino
