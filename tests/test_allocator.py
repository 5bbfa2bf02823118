"""retain_freed_memory: glibc's thresholds raised in a child process, the CLI's switch."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from focus_detr import allocator

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A residual block on an R-50 res2-sized map (68 MB outputs): with glibc's defaults every
# forward maps its large outputs afresh and faults them in page by page (~80k faults per
# forward); with the thresholds raised the second forward reuses the pages of the first.
_CHILD = """
import resource, sys
import torch
import torch.nn.functional as F
from focus_detr.allocator import retain_freed_memory
changed = retain_freed_memory() if sys.argv[1] == "retain" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.randn(1, 64, 200, 334)
w1, w2 = torch.randn(256, 64, 1, 1), torch.randn(64, 256, 3, 3)
def block(x):
    return (F.conv2d(F.relu(F.conv2d(x, w1)), w2, padding=1) + x).relu()
with torch.no_grad():
    block(x)
    before = faults()
    for _ in range(3):
        block(x)
print(changed, faults() - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    changed, faults = result.stdout.split()
    return changed, int(faults)


@pytest.mark.skipif(not _GLIBC, reason="mallopt is glibc's")
def test_retained_memory_is_reused_without_page_faults() -> None:
    changed, retained = _faults("retain")
    _, default = _faults("default")
    assert changed == "True"
    pages = 68 * 1024 * 1024 // 4096  # one res2 output
    assert default >= 3 * pages  # every forward faults its outputs in again
    assert retained < pages // 10  # the pages of the warm-up forward are reused


def test_threshold_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        allocator.retain_freed_memory(0)
    with pytest.raises(ValueError, match="threshold"):
        allocator.retain_freed_memory(2**31)


def test_environment_switches_the_cli_call_off(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv(allocator.ENVIRONMENT_VARIABLE, "0")
    assert allocator.retain_freed_memory_unless_disabled() is False
    monkeypatch.setenv(allocator.ENVIRONMENT_VARIABLE, "1")
    assert allocator.retain_freed_memory_unless_disabled() is True
    assert calls == [1]
