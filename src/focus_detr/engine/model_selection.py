"""Keeping the best evaluated weights and stopping early when evaluations stop improving."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BestSoFar:
    """The best validation AP of a run and how many evaluations came after it.

    Attributes:
        ap: best AP so far (NaN before the first evaluation).
        iteration: where it was reached (-1 before the first evaluation).
        evaluations_since: evaluations since the best one (0 right after an improvement).
    """

    ap: float = math.nan
    iteration: int = -1
    evaluations_since: int = 0

    def record(self, ap: float, iteration: int) -> bool:
        """Account for an evaluation; True if it is a new best (a tie is not)."""
        if math.isnan(self.ap) or ap > self.ap:
            self.ap, self.iteration, self.evaluations_since = float(ap), int(iteration), 0
            return True
        self.evaluations_since += 1
        return False

    def patience_exhausted(self, patience: int) -> bool:
        """``patience`` evaluations in a row without improvement (``patience <= 0``: never)."""
        return patience > 0 and self.evaluations_since >= patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ap = float(state["ap"])
        self.iteration = int(state["iteration"])
        self.evaluations_since = int(state["evaluations_since"])
