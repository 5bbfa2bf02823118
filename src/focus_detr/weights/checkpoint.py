"""Load weights: detrex releases (``.pth`` / ``.zip``, local or URL) and our own checkpoints.

Nothing is unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``);
``.safetensors`` files are read when the ``safetensors`` package is installed. Loading keeps the
model's dtype and device (values are copied into the existing parameters).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from focus_detr.errors import CheckpointError
from focus_detr.weights.detrex import describe_architecture, detrex_to_native, is_detrex_layout
from focus_detr.weights.download import download

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "load_checkpoint",
    "read_checkpoint",
    "read_state_dict",
]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@dataclass
class LoadReport:
    """Outcome of :func:`load_checkpoint` (non-strict loads can inspect it)."""

    source: str
    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    aliases_checked: int = 0


@dataclass
class Checkpoint:
    """A model state dict and what else its file says about the model.

    Attributes:
        state_dict: parameter and buffer tensors by name.
        metadata: our checkpoints' ``config`` (model/train settings as dicts),
            ``categories`` (``[{"id", "name"}]``) and ``preset``; empty for detrex releases.
    """

    state_dict: dict[str, Tensor]
    metadata: dict[str, object]


def read_checkpoint(source: str | os.PathLike[str] | Mapping[str, Tensor]) -> Checkpoint:
    """Read ``source``: a path, URL (cached), ``.zip`` release or an in-memory mapping.

    Accepts a bare state dict or a checkpoint dict with a ``"model"`` (detrex, ours) or
    ``"state_dict"`` entry; strips a ``module.`` prefix left by DistributedDataParallel.
    """
    if isinstance(source, Mapping):
        payload: object = dict(source)
    else:
        path = _local_path(str(source))
        try:
            payload = _load_file(path)
        except CheckpointError as error:
            if "://" not in str(source):
                raise
            raise CheckpointError(
                f"{error} (downloaded from {source}; delete {path} to fetch it again)"
            ) from error
    state = _unwrap(payload, str(source) if not isinstance(source, Mapping) else "<dict>")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    metadata: dict[str, object] = {}
    if isinstance(payload, Mapping):
        recorded = ("config", "categories", "format", "preset")
        metadata = {k: payload[k] for k in recorded if k in payload}
    return Checkpoint(state_dict=state, metadata=metadata)


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model state dict in ``source`` (see :func:`read_checkpoint`)."""
    return read_checkpoint(source).state_dict


def _local_path(source: str) -> Path:
    if "://" in source:
        return download(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {source!r} does not exist")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {source!r} is a folder; name the weights file in it (e.g. "
            f"{path / 'model_final.pth'})"
        )
    return path


def _load_file(path: Path) -> object:
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        return _load_from_archive(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError("reading .safetensors needs `pip install safetensors`") from error
        return load_file(str(path))
    with path.open("rb") as handle:
        head = handle.read(2)
    if not (head.startswith(b"\x80") or head == b"PK"):  # neither a pickle nor torch's zip
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (expected a torch.save .pth/.pt file, a .zip "
            f"holding one, or .safetensors; the file starts with {head!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers; refusing to "
            f"unpickle it (weights_only=True). Re-save its state dict with torch.save. ({error})"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error


def _is_torch_zip(path: Path) -> bool:
    """torch.save's own format is a zip with a ``*/data.pkl`` member."""
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def _load_from_archive(path: Path) -> object:
    """A release ``.zip``: load the single weights file inside it."""
    with zipfile.ZipFile(path) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and info.filename.endswith(_WEIGHT_SUFFIXES)
            and not Path(info.filename).name.startswith(".")
            and "__MACOSX" not in info.filename
        ]
        if len(members) != 1:
            names = [m.filename for m in members] or archive.namelist()
            raise CheckpointError(f"{path} should hold exactly one weights file, found: {names}")
        with tempfile.TemporaryDirectory() as folder:
            extracted = Path(folder) / Path(members[0].filename).name
            with archive.open(members[0]) as src, open(extracted, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return _load_file(extracted)


def _unwrap(payload: object, source: str) -> dict[str, Tensor]:
    if isinstance(payload, Mapping):
        for key in ("model", "state_dict"):
            inner = payload.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                return dict(inner)
        if payload and _all_tensors(payload):
            return dict(payload)
    raise CheckpointError(
        f"{source} does not contain a state dict (a mapping of names to tensors, directly or "
        f"under 'model' / 'state_dict')"
    )


def _all_tensors(mapping: Mapping[object, object]) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor] | Checkpoint,
    *,
    strict: bool = True,
) -> LoadReport:
    """Load weights into ``model`` (a :class:`~focus_detr.models.FocusDETR`).

    Args:
        source: local path, ``http(s)://`` or ``file://`` URL (cached), a ``.zip`` holding one
            weights file, or a state dict / checkpoint dict; detrex or focus-detr key layout.
        strict: refuse missing, unexpected or mis-shaped keys (the error lists them and names
            the architecture the checkpoint looks like).

    Returns:
        A :class:`LoadReport`.
    """
    state = source.state_dict if isinstance(source, Checkpoint) else read_state_dict(source)
    label = "<dict>" if isinstance(source, Mapping | Checkpoint) else str(source)
    layout = "detrex" if is_detrex_layout(state) else "focus-detr"
    report = LoadReport(source=label, layout=layout)
    if layout == "detrex":
        num_decoder_layers = len(model.decoder.layers)  # type: ignore[union-attr,arg-type]
        converted, conversion = detrex_to_native(state, num_decoder_layers)
        report.aliases_checked = conversion.aliases_checked
        if conversion.aliases_conflicting:
            raise CheckpointError(
                f"{label}: entries that detrex stores as one shared tensor differ: "
                + "; ".join(conversion.aliases_conflicting[:10])
            )
        state = converted
    expected = model.state_dict()
    report.missing = sorted(set(expected) - set(state))
    report.unexpected = sorted(set(state) - set(expected))
    report.mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise CheckpointError(_mismatch_message(label, state, report, model))
    usable = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(usable, strict=False)
    return report


def _mismatch_message(
    label: str, state: dict[str, Tensor], report: LoadReport, model: nn.Module
) -> str:
    def listing(title: str, items: list[str]) -> str:
        if not items:
            return ""
        shown = "\n    ".join(items[:20])
        more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}"

    return (
        f"checkpoint {label} does not fit the model."
        f"\n  checkpoint looks like: {describe_architecture(state)}"
        f"\n  model is:              {describe_architecture(model.state_dict())}"
        + listing("missing keys", report.missing)
        + listing("unexpected keys", report.unexpected)
        + listing("shape mismatches", report.mismatched)
    )
