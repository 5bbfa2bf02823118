"""Numerical parity with the official detrex implementation.

Reference fixtures (``.npz``) hold what the official code computed, in float64, for one image
with weights synthesised deterministically from a state-dict manifest (a JSON list of the
checkpoint's keys and shapes). This module rebuilds those weights, runs our model and compares
every array the fixture holds with tolerances that separate rounding from real divergence.

Used by the test suite and by ``focus-detr parity FIXTURE.npz`` (which runs the same check on
any fixture, e.g. other images or a Swin preset).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from focus_detr.models.detector import FocusDETR
from focus_detr.models.postprocess import postprocess

# Config name of the upstream model file -> our preset with the same architecture.
CONFIG_PRESETS = {
    "focus_detr_r50": "focus_detr_r50_4scale_12ep",
    "focus_detr_r101_4scale_12ep": "focus_detr_r101_4scale_12ep",
    "focus_detr_swin_tiny_224": "focus_detr_swin_tiny_224_4scale_12ep",
    "focus_detr_swin_base_384": "focus_detr_swin_base_384_4scale_22k_36ep",
    "focus_detr_swin_large_384": "focus_detr_swin_large_384_4scale_22k_36ep",
}

# upstream config files whose zoo row is named differently here
UPSTREAM_CONFIG_PRESETS = {
    "focus_detr_swin_base_384_4scale_36ep": "focus_detr_swin_base_384_4scale_22k_36ep",
    "focus_detr_swin_large_384_4scale_36ep": "focus_detr_swin_large_384_4scale_22k_36ep",
}

ENCODER_ATOL = 1e-10
DECODER_ATOL = 1e-8
PIXEL_ATOL = 1e-6


def preset_for_config(*configs: object) -> str | None:
    """The preset of the first recognised config name: a preset name, an upstream config file
    (``.../focus_detr_r50_4scale_24ep.py``) or a manifest's model config
    (``focus_detr_swin_tiny_224``); None when none is known."""
    from focus_detr.presets import preset_names

    known = set(preset_names())
    for config in configs:
        name = Path(str(config)).name.removesuffix(".py") if config is not None else ""
        if name in known:
            return name
        found = UPSTREAM_CONFIG_PRESETS.get(name) or CONFIG_PRESETS.get(name)
        if found is not None:
            return found
    return None


def read_manifest(path: str | Path) -> dict:
    """A state-dict manifest (``keys/*.json``, optionally gzipped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


def _relative_position_index(window: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)])
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).copy()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1).astype(np.int64)


def synthesize_tensor(key: str, shape: tuple[int, ...]) -> Tensor:
    """The fixtures' deterministic value of one entry (seeded by the CRC32 of its key)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        values = 1.0 + 0.1 * rng.random(shape)
    elif len(shape) == 1 and key.endswith(".weight"):
        values = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) <= 1:
        values = 0.1 * rng.standard_normal(shape)
    else:
        values = rng.standard_normal(shape) / math.sqrt(float(np.prod(shape[1:])))
    return torch.from_numpy(np.asarray(values, dtype=np.float64))


def synthesize_state_dict(
    manifest: Mapping, make: Callable[[str, tuple[int, ...]], Tensor] = synthesize_tensor
) -> OrderedDict[str, Tensor]:
    """The detrex state dict of a manifest, aliases sharing their tensor.

    ``make`` builds float entries (default: the fixtures' synthetic values); integer buffers
    (Swin's ``relative_position_index``) get the value the model computes itself.
    """
    state: OrderedDict[str, Tensor] = OrderedDict()
    for entry in manifest["entries"]:
        key, shape = entry["key"], tuple(int(s) for s in entry["shape"])
        if entry.get("alias_of"):
            state[key] = state[entry["alias_of"]]
        elif not entry["dtype"].startswith("float"):
            if not key.endswith("relative_position_index"):
                raise ValueError(f"no rule for integer entry {key}")
            state[key] = torch.from_numpy(_relative_position_index(round(math.sqrt(shape[0]))))
        else:
            state[key] = make(key, shape)
    return state


@dataclass
class Check:
    """One compared array."""

    name: str
    error: float
    tolerance: float
    passed: bool
    note: str = ""


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def format(self) -> str:
        lines = [f"{'array':44s} {'max error':>11s} {'tolerance':>10s}  ok"]
        for c in self.checks:
            mark = "yes" if c.passed else "NO"
            lines.append(f"{c.name:44s} {c.error:11.3e} {c.tolerance:10.1e}  {mark} {c.note}")
        return "\n".join(lines)


def reference_image(reference: Mapping[str, np.ndarray]) -> Tensor:
    """The fixture's image as a ``[3, H, W]`` uint8 tensor."""
    return (
        torch.from_numpy(np.array(reference["image"], dtype=np.uint8)).permute(2, 0, 1).contiguous()
    )


class _Capture:
    """Keeps the outputs of the backbone and the neck during one forward pass."""

    def __init__(self, model: FocusDETR) -> None:
        self.backbone: list[Tensor] = []
        self.neck: list[Tensor] = []
        self._handles = [
            model.backbone.register_forward_hook(lambda m, i, o: self.backbone.extend(o)),
            model.neck.register_forward_hook(lambda m, i, o: self.neck.extend(o)),
        ]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def compare_with_reference(model: FocusDETR, reference: Mapping[str, np.ndarray]) -> ParityReport:
    """Run ``model`` (float64, eval, weights loaded) on the fixture's image and compare."""
    image = reference_image(reference)
    capture = _Capture(model)
    try:
        with torch.no_grad():
            output = model([image], raw=True)
        detections = postprocess(
            output.pred_logits,
            output.pred_boxes,
            output.image_sizes,
            model.config.num_detections,
            output.query_mask,
        )[0]
    finally:
        capture.close()
    # The "official" variant keeps some float32 constants: ~1e-7 relative before the decoder.
    official = str(reference.get("variant", "f64")) == "official"
    scale = 1e5 if official else 1.0
    report = ParityReport()
    _compare_features(report, reference, capture, scale)
    _compare_encoder(report, reference, output, scale)
    _compare_decoder(report, reference, output, official)
    _compare_detections(report, reference, detections, official)
    return report


def _add(
    report: ParityReport, reference: Mapping, name: str, ours: Tensor | np.ndarray, tol: float
) -> None:
    if name not in reference:
        return
    expected = np.asarray(reference[name], dtype=np.float64)
    rows = reference.get(f"{name}__rows")
    actual = np.asarray(
        ours.detach().cpu().numpy() if isinstance(ours, Tensor) else ours, dtype=np.float64
    )
    if rows is not None:
        actual = np.take(actual, np.asarray(rows), axis=_row_axis(name))
    if actual.shape != expected.shape:
        report.checks.append(
            Check(name, math.inf, tol, False, f"shape {actual.shape} vs {expected.shape}")
        )
        return
    finite = np.isfinite(expected)
    same_inf = np.array_equal(np.isinf(actual), np.isinf(expected))
    error = float(np.abs(actual[finite] - expected[finite]).max()) if finite.any() else 0.0
    report.checks.append(Check(name, error, tol, error <= tol and same_inf))


def _row_axis(name: str) -> int:
    return {"aux_pred_logits": 2, "aux_pred_boxes": 2, "decoder_inter_references": 2}.get(
        name, 1 if name.startswith(("pred_", "enc_outputs", "enc_state", "decoder_hs")) else 0
    )


def _add_set(report: ParityReport, reference: Mapping, name: str, ours: Tensor) -> None:
    if name not in reference:
        return
    expected = set(np.asarray(reference[name]).reshape(-1).tolist())
    actual = set(ours.reshape(-1).tolist())
    differ = len(expected ^ actual)
    report.checks.append(Check(name, float(differ), 0.0, differ == 0, "(set difference)"))


def _compare_features(
    report: ParityReport, reference: Mapping, capture: _Capture, scale: float
) -> None:
    names = (
        ["res3", "res4", "res5"] if "backbone_res3_chanmean" in reference else ["p1", "p2", "p3"]
    )
    for name, feature in zip(names, capture.backbone):
        _add(
            report,
            reference,
            f"backbone_{name}_chanmean",
            feature.mean(dim=(0, 2, 3)),
            ENCODER_ATOL * scale,
        )
        _add(
            report,
            reference,
            f"backbone_{name}_slice",
            feature[0, :8, :4, :4],
            ENCODER_ATOL * scale,
        )
    for level, feature in enumerate(capture.neck):
        _add(
            report,
            reference,
            f"neck_l{level}_chanmean",
            feature.mean(dim=(0, 2, 3)),
            ENCODER_ATOL * scale,
        )
        _add(report, reference, f"neck_l{level}_first16ch", feature[0, :16], ENCODER_ATOL * scale)


def _compare_encoder(report: ParityReport, reference: Mapping, output, scale: float) -> None:
    tol = ENCODER_ATOL * scale
    _add(
        report, reference, "temp_backbone_mask_prediction", output.foreground_logits[..., None], tol
    )
    for layer, token_ids in enumerate(output.encoder.token_indices):
        _add_set(report, reference, f"foreground_inds_l{layer}", token_ids[0])
        dual = output.encoder.dual_attention_indices[layer][0]
        _add_set(report, reference, f"oesm_select_token_ids_l{layer}", dual)
    memory = output.memory[0]
    _add(report, reference, "encoder_memory_every10th", memory[::10], tol)
    _add(report, reference, "encoder_memory_chanmean", memory.mean(dim=0), tol)
    _add(report, reference, "enc_outputs_pred_logits", output.proposal_logits, tol * 10)
    _add(report, reference, "enc_outputs_pred_boxes", output.proposal_boxes, tol * 10)
    _add(report, reference, "enc_state", output.proposal_hidden, tol * 10)
    if "enc_topk_proposals" in reference and scale == 1.0:
        expected = np.asarray(reference["enc_topk_proposals"])
        actual = output.proposal_token_indices.cpu().numpy()
        same = actual.shape == expected.shape and bool((actual == expected).all())
        report.checks.append(
            Check("enc_topk_proposals", 0.0 if same else 1.0, 0.0, same, "(exact order)")
        )


def _compare_decoder(report: ParityReport, reference: Mapping, output, official: bool) -> None:
    logits_tol = 1e-2 if official else DECODER_ATOL
    boxes_tol = 1e-3 if official else DECODER_ATOL
    _add(report, reference, "init_reference", output.initial_references, boxes_tol)
    _add(report, reference, "decoder_inter_references", output.decoder_references, boxes_tol)
    _add(report, reference, "decoder_hs_last", output.decoder_last_hidden, logits_tol)
    _add(report, reference, "aux_pred_logits", output.logits[:-1], logits_tol)
    _add(report, reference, "aux_pred_boxes", output.boxes[:-1], boxes_tol)
    _add(report, reference, "pred_logits", output.pred_logits, logits_tol)
    _add(report, reference, "pred_boxes", output.pred_boxes, boxes_tol)


def _compare_detections(
    report: ParityReport, reference: Mapping, detections: dict, official: bool
) -> None:
    if "det_boxes_f64" not in reference or official:
        return
    keep = np.asarray(reference["det_keep_mask_f64"], dtype=bool)
    expected_boxes = np.asarray(reference["det_boxes_f64"])
    if expected_boxes.shape[0] == keep.shape[0]:
        expected_boxes = expected_boxes[keep]
    labels = detections["labels"].cpu().numpy()
    expected_labels = (
        np.asarray(reference["topk_label"])[keep] if "topk_label" in reference else None
    )
    if expected_labels is not None:
        same = labels.shape == expected_labels.shape and bool((labels == expected_labels).all())
        report.checks.append(Check("det_labels", 0.0 if same else 1.0, 0.0, same, "(exact)"))
    if detections["boxes"].shape[0] != expected_boxes.shape[0]:
        report.checks.append(
            Check("det_boxes_f64", math.inf, PIXEL_ATOL, False, "different counts")
        )
        return
    _add(
        report, {"det_boxes_f64": expected_boxes}, "det_boxes_f64", detections["boxes"], PIXEL_ATOL
    )
    if "topk_scores" in reference:
        scores = np.asarray(reference["topk_scores"]).reshape(-1)[keep]
        _add(report, {"det_scores": scores}, "det_scores", detections["scores"], DECODER_ATOL)
