"""Checks of single values, shared by every layer that validates its own configuration."""

from __future__ import annotations

import math

from src.core.errors import ConfigError


def number(value, key: str, *, integer: bool = False, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:  # fmt: skip
    """``value`` as a float (an int with ``integer``) within the bounds, or a :class:`ConfigError` naming ``key``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high)
    )
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"{key} must be {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")
    return int(value) if integer else float(value)
