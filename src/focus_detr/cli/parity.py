"""``focus-detr parity``: compare with a reference fixture computed by the original code."""

from __future__ import annotations

import argparse

from focus_detr.cli import common

NAME = "parity"
HELP = "compare with a reference fixture computed by the official code"
DESCRIPTION = (
    "Build the fixture's architecture in float64 with weights synthesised from a "
    "state-dict manifest, run it on the fixture's image and compare every array."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixture", help=".npz written by the reference script")
    parser.add_argument("--manifest", required=True, help="keys/<config>.json(.gz)")
    parser.add_argument("--preset", help="preset to build (default: from the fixture's config)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from focus_detr.models.build import build_model
    from focus_detr.weights.checkpoint import load_checkpoint
    from focus_detr.weights.parity import (
        compare_with_reference,
        preset_for_config,
        read_manifest,
        synthesize_state_dict,
    )

    reference = dict(np.load(args.fixture))
    manifest = read_manifest(args.manifest)
    preset = args.preset or preset_for_config(reference.get("config"), manifest.get("config"))
    if preset is None:
        raise common.UsageError("cannot tell the preset from the fixture; pass --preset")
    model = build_model(preset, dtype=torch.float64).eval()
    load_checkpoint(model, synthesize_state_dict(manifest))
    print(f"preset {preset}, fixture {args.fixture}")
    report = compare_with_reference(model, reference)
    print(report.format())
    print("PASSED" if report.passed else f"FAILED: {len(report.failures())} arrays differ")
    return 0 if report.passed else 1
