"""Downloading weights into a cache, verified before anything is cached.

A URL (``http``, ``https``, ``file``) is fetched once into ``$FOCUS_DETR_CACHE`` (default
``~/.cache/focus_detr``); the file reaches the cache only after the checks of :func:`download`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any

from focus_detr.errors import CheckpointError
from focus_detr.io import atomic_path

__all__ = ["DOWNLOAD_TIMEOUT_S", "cache_dir", "download"]


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
    # verified before the rename: a failed check caches nothing
    with atomic_path(target) as temporary:
        with temporary.open("wb") as out:
            actual = _fetch(url, out, name if progress else None, _timeout(timeout))
        problem = _quick_check(temporary, full=True)
        if problem is None and sha256 is not None and actual != sha256.lower():
            problem = f"SHA-256 {actual}, expected {sha256.lower()}"
        if problem is not None:
            raise CheckpointError(f"downloaded {url} is not usable: {problem}; nothing was cached")
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
