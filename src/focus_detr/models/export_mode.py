"""The export-mode switch: graphs traced for deployment stay correct at every input size.

While ``torch.export`` traces the model (``torch.onnx.export(..., dynamo=True)`` does), image
sizes are symbols and tensor values are unknown. Turning a shape into a Python ``int`` or
branching on a tensor's value there would freeze what the example input happened to show: the
level shapes, the padding masks, the token budgets. The eager model takes exactly such fast
paths (skip masking when nothing is padded; gather exactly the largest token budget of the
batch). Under export they are replaced by shape-generic code that computes the same results:
masks are always built from the valid sizes, and every width is a function of the padded input
shape (see :func:`focus_detr.models.focus_encoder.layer_width_bounds`).

Eager execution never takes the export branches, so its results and speed do not change.
"""

from __future__ import annotations

from typing import cast

import torch


def is_exporting() -> bool:
    """True while ``torch.export`` traces the model (the ONNX exporter included)."""
    return bool(torch.compiler.is_exporting())


def traced_size(value: torch.Tensor, *, at_least: int, at_most: int) -> int:
    """``int(value)`` of a 0-d integer tensor, as a size.

    Under export it stays in the graph: an unbacked symbol computed from the inputs at run
    time, known to lie in ``[at_least, at_most]`` (the bounds are checked facts the tracer
    reasons with). Eager mode reads the value.
    """
    if not is_exporting():
        return int(value)
    size = cast(int, value.item())  # a SymInt, which behaves as an int in size arithmetic
    torch._check(size >= at_least)
    torch._check(size <= at_most)
    return size
