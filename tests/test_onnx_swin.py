"""The Swin backbone in ONNX with dynamic sizes (the zoo's Swin presets export through it).

Swin pads every stage to whole windows, crops back and merges 2x2 patches; the sizes this
creates are nested floor divisions of the input size. They are written so that the tracer
reasons about them in seconds (an earlier form took it hours), and the facts it cannot prove
for every size are kept as run-time checks that the ONNX graph drops. So the graph must be right
at every size, including those where such a fact is false: a stage of a single window.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from focus_detr.deploy.onnx_export import trace_to_onnx  # noqa: E402
from focus_detr.models.backbone_swin import SwinTransformer  # noqa: E402

WINDOW = 7
MIN_SIDE = 64  # every stage at least 2 wide (the tracer treats sizes 0 and 1 apart)


class _Backbone(nn.Module):
    def __init__(self, backbone: SwinTransformer) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone(pixels, image_sizes))


def _small_swin() -> SwinTransformer:
    torch.manual_seed(0)
    swin = SwinTransformer(
        embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=WINDOW
    )
    for parameter in swin.parameters():  # beyond the near-identity initialisation
        nn.init.normal_(parameter, std=0.2)
    return swin.eval()


def _padded_batch(sizes: list[tuple[int, int]], seed: int) -> tuple[Tensor, Tensor]:
    """Random normalised pixels of each size, zero-padded to the largest."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixels = torch.zeros(len(sizes), 3, height, width)
    for index, (h, w) in enumerate(sizes):
        pixels[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
    return pixels, torch.tensor(sizes, dtype=torch.int64)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[SwinTransformer, ort.InferenceSession]:
    swin = _small_swin()
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=64)
    height, width = dim("height", min=MIN_SIDE, max=4096), dim("width", min=MIN_SIDE, max=4096)
    example = _padded_batch([(293, 357), (243, 267)], seed=0)
    program = trace_to_onnx(
        _Backbone(swin),
        example,
        dynamic_shapes=({0: batch, 2: height, 3: width}, {0: batch}),
        opset=18,
        input_names=["pixels", "image_sizes"],
        output_names=["stride8", "stride16", "stride32"],
        unproven_shape_facts=swin.export_has_unproven_shape_facts,
    )
    path = tmp_path_factory.mktemp("swin") / "swin.onnx"
    program.save(str(path))
    return swin, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "sizes",
    [
        [(301, 217)],  # unseen, every stage several windows, odd sizes
        [(64, 64)],  # the smallest canvas: one window at stages 2-4
        [(230, 97)],  # one window across at stages 3 and 4 only
        [(224, 448)],  # whole windows everywhere: no window padding
        [(301, 217), (150, 97), (40, 230)],  # a padded batch
    ],
)
def test_swin_onnx_equals_pytorch_at_sizes_the_export_never_saw(session, sizes) -> None:
    swin, runtime = session
    pixels, image_sizes = _padded_batch(sizes, seed=len(sizes))
    with torch.no_grad():
        expected = swin(pixels, image_sizes)
    found = runtime.run(None, {"pixels": pixels.numpy(), "image_sizes": image_sizes.numpy()})
    assert len(found) == len(expected)
    for want, got in zip(expected, found):
        assert tuple(got.shape) == tuple(want.shape)
        scale = float(want.abs().max())
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5 * scale)
