"""``focus-detr presets``: the model zoo and the small CPU models."""

from __future__ import annotations

import argparse

NAME = "presets"
HELP = "list the named models (model zoo rows)"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from focus_detr.presets import get_preset, preset_names

    for name in preset_names():
        preset = get_preset(name)
        ap = f"{preset.coco_ap:.1f}" if preset.coco_ap is not None else "-"
        url = preset.weights_url or "(no released weights)"
        print(f"{name:45s} AP {ap:>5s}  {preset.description}\n{'':45s} {url}")
    return 0
