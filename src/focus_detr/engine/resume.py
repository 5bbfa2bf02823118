"""Continuing a run: what changed since its checkpoint, and restoring the optimiser by name.

Resuming never records one value and uses another: a run may continue with other recipe or
loss settings (a new learning rate, a longer schedule...), which then apply from the resumed
iteration and are reported; a different model architecture is refused. The optimiser's
per-parameter state (AdamW moments, step counts) is restored by parameter name, so that its
groups may be regrouped by the new settings; the groups' hyperparameters come from the new
settings, the learning-rate schedule restarts at the resumed iteration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from focus_detr.config import Config


def setting_changes(saved: Config, current: Config, sections: tuple[str, ...]) -> list[str]:
    """``"section.name: old -> new"`` for every setting of ``sections`` that differs."""
    changes = []
    for section in sections:
        before, after = getattr(saved, section), getattr(current, section)
        for item in dataclasses.fields(before):
            old, new = getattr(before, item.name), getattr(after, item.name)
            if old != new:
                changes.append(f"{section}.{item.name}: {old!r} -> {new!r}")
    return changes


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]
) -> list[str]:
    """Load the per-parameter state of ``saved`` (an optimiser state dict whose groups list
    their parameters' ``names``) into ``optimizer``, matching parameters by name.

    The groups of ``optimizer`` keep their own hyperparameters. Returns the names of the
    parameters that had no saved state (e.g. newly trainable ones).
    """
    saved_by_name: dict[str, Any] = {}
    for group in saved["param_groups"]:
        for index, name in zip(group["params"], group["names"]):
            if index in saved["state"]:
                saved_by_name[name] = saved["state"][index]
    current = optimizer.state_dict()
    state: dict[int, Any] = {}
    missing: list[str] = []
    for group in current["param_groups"]:
        for index, name in zip(group["params"], group["names"]):
            if name in saved_by_name:
                state[index] = saved_by_name[name]
            else:
                missing.append(name)
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return missing
