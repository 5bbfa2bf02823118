"""Load weights: detrex releases (``.pth`` / ``.zip``, local or URL) and our own checkpoints.

Nothing is unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``);
``.safetensors`` files are read when the ``safetensors`` package is installed. Loading keeps the
model's dtype and device (values are copied into the existing parameters).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focus_detr.weights.detrex import describe_architecture, detrex_to_native, is_detrex_layout

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """Outcome of :func:`load_checkpoint` (non-strict loads can inspect it)."""

    source: str
    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    aliases_checked: int = 0


def cache_dir() -> Path:
    """Where downloaded weights go: ``$FOCUS_DETR_CACHE`` or ``~/.cache/focus_detr``."""
    root = os.environ.get("FOCUS_DETR_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "focus_detr"


#: Seconds a download may wait for the server (to connect, and between two reads).
DOWNLOAD_TIMEOUT_S = 60.0


def download(
    url: str,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> Path:
    """Fetch ``url`` (http, https or file) into the cache once; returns the local path.

    A file reaches the cache only after it is verified: the server answered 200 with something
    other than an HTML page, the length matches ``Content-Length``, the content is a readable
    checkpoint container (a zip archive, a ``torch.save`` file or safetensors), and its SHA-256
    equals ``sha256`` when given (also as a ``#sha256=<hex>`` suffix of the URL, pip style).
    A cached file that fails the quick checks (or the hash) is downloaded again.

    Args:
        url: where the weights are.
        sha256: expected SHA-256 of the file (hex).
        progress: show a progress bar.
        timeout: seconds to wait for the server (connect, and between reads); default
            ``$FOCUS_DETR_DOWNLOAD_TIMEOUT`` or :data:`DOWNLOAD_TIMEOUT_S`.

    Raises:
        CheckpointError: naming the URL and what was wrong; nothing is cached then.
    """
    url, sha256 = _split_hash(url, sha256)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise CheckpointError(f"unsupported URL scheme in {url!r}")
    name = Path(urllib.parse.unquote(parsed.path)).name or "checkpoint"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache_dir() / digest / name
    if target.is_file():
        problem = _quick_check(target) or _hash_problem(target, sha256)
        if problem is None:
            return target
        warnings.warn(
            f"cached {target} is unusable ({problem}); downloading it again", stacklevel=2
        )
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".download")
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out, name if progress else None, _timeout(timeout))
        problem = _quick_check(Path(temporary), full=True)
        if problem is None and sha256 is not None and actual != sha256.lower():
            problem = f"SHA-256 {actual}, expected {sha256.lower()}"
        if problem is not None:
            raise CheckpointError(f"downloaded {url} is not usable: {problem}; nothing was cached")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def _split_hash(url: str, sha256: str | None) -> tuple[str, str | None]:
    base, _, fragment = url.partition("#")
    if fragment.startswith("sha256="):
        given = fragment.removeprefix("sha256=")
        if sha256 is not None and sha256.lower() != given.lower():
            raise CheckpointError(f"two different SHA-256 values given for {base}")
        return base, given
    return url, sha256


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return float(timeout)
    return float(os.environ.get("FOCUS_DETR_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT_S))


def _fetch(url: str, out: Any, label: str | None, timeout: float) -> str:
    """Copy ``url`` into ``out``; returns the SHA-256 of what was written."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = getattr(response, "status", None) or 200
            if status != 200:
                raise CheckpointError(f"could not download {url}: HTTP status {status}")
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("text/html"):
                raise CheckpointError(
                    f"could not download {url}: the server sent a web page ({content_type}), "
                    "not a file (a login or error page?)"
                )
            total = int(response.headers.get("Content-Length") or 0) or None
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not label) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except CheckpointError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as error:
        reason = "no answer in time" if isinstance(error, TimeoutError) else error
        raise CheckpointError(f"could not download {url}: {reason}") from error
    if total is not None and written != total:
        raise CheckpointError(
            f"could not download {url}: the connection ended after {written} of {total} bytes"
        )
    return digest.hexdigest()


def _quick_check(path: Path, full: bool = False) -> str | None:
    """Why ``path`` is not a checkpoint container, or None. ``full`` also checks every
    member of a zip archive (CRC), which reads the whole file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"unreadable: {error}"
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip() if full else None
        except (zipfile.BadZipFile, OSError) as error:
            return f"a damaged zip archive ({error})"
        return None if broken is None else f"a damaged zip archive (member {broken})"
    if head.startswith(b"\x80"):  # a pickle (torch.save's legacy format)
        return None
    if path.suffix == ".safetensors" and size > 8:
        return None
    shown = head.split(b"\n")[0][:16]
    return f"not a checkpoint (it starts with {shown!r})"


def _hash_problem(path: Path, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    return None if actual == sha256.lower() else f"SHA-256 {actual}, expected {sha256.lower()}"


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
