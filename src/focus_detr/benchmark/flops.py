"""Operation counting by stage of the forward pass.

Convention (that of fvcore / detectron2's ``FlopCountAnalysis``, which produced the numbers
of the paper and of the upstream code, so that totals compare like with like):

- one fused multiply-add counts as one FLOP: convolutions, matrix products (linear layers,
  attention ``Q K^T`` and ``A V``);
- deformable attention sampling counts 4 FLOPs per channel per sampling point (bilinear
  interpolation; the attention weight is folded into the 4 corner weights), fvcore's count for
  ``grid_sampler``;
- normalisation: 5 per element for LayerNorm/GroupNorm, 2 for an inference BatchNorm;
- element-wise operations (activations, additions) count 0, as in fvcore.

Selection and data movement do no arithmetic but are not free: they are reported apart, in
``selection`` (elements compared by top-k) and ``movement`` (elements read by gather/index and
written by scatter), and are not included in ``flops``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from focus_detr.models.stages import listening

aten = torch.ops.aten


@dataclass
class OperationCounts:
    """Counts per stage: ``flops[stage]``, ``selection[stage]``, ``movement[stage]``."""

    flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    selection: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    movement: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def total(self, kind: str = "flops") -> float:
        return float(sum(getattr(self, kind).values()))


def _registry_macs(func: Callable, args: tuple, kwargs: dict, out: object) -> float:
    """MACs of a matmul/conv/attention op from PyTorch's FLOP registry (which counts 2/MAC)."""
    return flop_registry[func](*args, **kwargs, out_val=out) / 2


def _norm_flops(func: Callable, args: tuple, out: object) -> float:
    if func in (aten.native_layer_norm.default, aten.native_group_norm.default):
        return 5.0 * args[0].numel()
    return 2.0 * args[0].numel()  # inference batch norm


_NORMS = {
    aten.native_layer_norm.default,
    aten.native_group_norm.default,
    aten._native_batch_norm_legit_no_training.default,
}
_EMBEDDING_BAG = {aten._embedding_bag.default, aten._embedding_bag_forward_only.default}
_GATHERS = {
    aten.gather.default,
    aten.index_select.default,
    aten.index.Tensor,
    aten.embedding.default,
}
_SCATTERS = {
    aten.scatter.src,
    aten.scatter_.src,
    aten.scatter.value,
    aten.scatter_add.default,
    aten.index_copy.default,
    aten.index_copy_.default,
}
#: PyTorch's CPU attention kernel, which its FLOP registry does not list (the CUDA ones it does).
_CPU_ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default


def _attention_macs(args: tuple) -> float:
    """``q @ k^T`` and ``weights @ v`` of ``q [B, H, Q, D]``, ``k [B, H, K, D]``,
    ``v [B, H, K, Dv]``."""
    query, key, value = args[:3]
    batch_heads = query.shape[:-2].numel()
    num_queries, num_keys = query.shape[-2], key.shape[-2]
    return float(batch_heads * num_queries * num_keys * (query.shape[-1] + value.shape[-1]))


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OperationCounts) -> None:
        super().__init__()
        self.counts = counts
        self.stages: list[str] = ["other"]

    def enter(self, name: str) -> None:
        self.stages.append(name)

    def exit(self, name: str) -> None:
        self.stages.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        stage = self.stages[-1]
        packet = func._overloadpacket
        if packet in flop_registry:
            self.counts.flops[stage] += _registry_macs(packet, args, kwargs, out)
        elif func is _CPU_ATTENTION:
            self.counts.flops[stage] += _attention_macs(args)
        elif func in _NORMS:
            self.counts.flops[stage] += _norm_flops(func, args, out)
        elif func in _EMBEDDING_BAG:
            indices = args[1]
            self.counts.flops[stage] += float(indices.numel() * args[0].shape[1])
        elif func is aten.topk.default:
            self.counts.selection[stage] += float(args[0].numel())
        elif func in _GATHERS:
            self.counts.movement[stage] += float(out.numel())
        elif func in _SCATTERS:
            source = args[-1]
            moved = source.numel() if isinstance(source, torch.Tensor) else args[2].numel()
            self.counts.movement[stage] += float(moved)
        return out


def count_operations(run: Callable[[], object]) -> OperationCounts:
    """Count what ``run()`` does (e.g. ``lambda: model(images)``), by forward stage."""
    counts = OperationCounts()
    counter = _Counter(counts)
    with torch.no_grad(), listening(counter), counter:
        run()
    return counts
