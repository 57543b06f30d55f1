"""Learning-rate schedules as pure functions of the step: a multiplier of the base rate."""

from __future__ import annotations

import math

KINDS = ("constant", "linear", "cosine")


def lr_multiplier(
    step: int, total_steps: int, kind: str = "cosine", warmup_steps: int = 0, min_ratio: float = 0.0
) -> float:
    """Linear warm-up over ``warmup_steps``, then ``kind`` decay to ``min_ratio`` at ``total_steps``."""
    if kind not in KINDS:
        raise ValueError(f"scheduler.kind must be one of {KINDS}, got {kind!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant" or total_steps <= warmup_steps:
        return 1.0
    frac = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    shape = 1 - frac if kind == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return min_ratio + (1 - min_ratio) * shape
