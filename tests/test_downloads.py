"""Downloads are verified before they are cached: a local HTTP server on 127.0.0.1 that stalls,
cuts the body short, answers with a web page or with other bytes than announced."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from focus_detr.cli import main
from focus_detr.weights.checkpoint import CheckpointError, read_checkpoint
from focus_detr.weights.download import download


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"weight": torch.arange(6.0)}}, buffer)
    return buffer.getvalue()


GOOD = _checkpoint_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    stop = threading.Event()

    def do_GET(self) -> None:
        if self.path.startswith("/stall/"):  # accepts, never answers (until the test ends)
            self.stop.wait(30)
            return
        if self.path.startswith("/truncated/"):
            self._head(200, "application/octet-stream", len(GOOD))
            self.wfile.write(GOOD[: len(GOOD) // 3])
            return
        if self.path.startswith("/page/"):
            page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
            self._head(200, "text/html; charset=utf-8", len(page))
            self.wfile.write(page)
            return
        if self.path.startswith("/missing/"):
            self._head(404, "text/plain", 9)
            self.wfile.write(b"not found")
            return
        self._head(200, "application/octet-stream", len(GOOD))
        self.wfile.write(GOOD)

    def _head(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server on 127.0.0.1 (loopback only) and an empty download cache."""
    monkeypatch.setenv("FOCUS_DETR_CACHE", str(tmp_path / "cache"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    _Handler.stop.clear()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Handler.stop.set()
        httpd.shutdown()
        httpd.server_close()


def _cached_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_good_download_is_cached_once(server: str, tmp_path: Path) -> None:
    path = download(f"{server}/good/weights.pth", progress=False)
    assert path.read_bytes() == GOOD
    assert download(f"{server}/good/weights.pth", progress=False) == path
    assert torch.equal(read_checkpoint(path).state_dict["weight"], torch.arange(6.0))


def test_a_stalled_server_times_out(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="no answer in time"):
        download(f"{server}/stall/weights.pth", progress=False, timeout=0.5)
    assert time.monotonic() - started < 20  # it did not hang
    assert _cached_files(tmp_path) == []


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("truncated", r"ended after \d+ of \d+ bytes"),
        ("page", "sent a web page"),
        ("missing", "404"),
    ],
)
def test_bad_answers_are_never_cached(server: str, tmp_path: Path, route: str, message: str):
    with pytest.raises(CheckpointError, match=message):
        download(f"{server}/{route}/weights.pth", progress=False, timeout=5)
    assert _cached_files(tmp_path) == []


def test_a_wrong_hash_is_refused_and_a_right_one_accepted(server: str, tmp_path: Path) -> None:
    right = hashlib.sha256(GOOD).hexdigest()
    with pytest.raises(CheckpointError, match="SHA-256"):
        download(f"{server}/good/a.pth", sha256="0" * 64, progress=False)
    assert _cached_files(tmp_path) == []
    assert download(f"{server}/good/a.pth#sha256={right}", progress=False).read_bytes() == GOOD


def test_a_damaged_cached_file_is_downloaded_again(server: str, tmp_path: Path) -> None:
    url = f"{server}/good/weights.pth"
    path = download(url, progress=False)
    path.write_bytes(b"<html>an error page saved by an older version</html>")
    with pytest.warns(UserWarning, match="downloading it again"):
        assert download(url, progress=False).read_bytes() == GOOD


def test_cli_reports_a_web_page_instead_of_weights(server: str, tmp_path: Path, capsys) -> None:
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    status = main(
        [
            "predict",
            str(image),
            "--weights",
            f"{server}/page/weights.pth",
            "--preset",
            "focus_detr_tiny",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 2
    assert "sent a web page" in capsys.readouterr().err
