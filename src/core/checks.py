"""Checks of single values, shared by every layer that validates its own configuration."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

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


def mandatory(cfg) -> None:
    """A :class:`ConfigError` naming the first key of ``cfg`` that is mandatory (``???``) and was not given."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_dict(cfg):
        return
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # Hydra's node is Hydra's to check
    missing = sorted(OmegaConf.missing_keys(own))
    if missing:
        raise ConfigError(f"{missing[0]} is mandatory here and has no value (???); give {missing[0]}=...")


def existing_file(value, key: str) -> Path:
    """``value`` as the path of a readable file, or a :class:`ConfigError` naming ``key``."""
    path = Path(str(value))
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path} is not readable (permissions)")
    return path


def timestamp(value, key: str) -> pd.Timestamp:
    """``value`` as a UTC timestamp (a naive one is taken as UTC), or a :class:`ConfigError` naming ``key``."""
    try:
        ts = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        ts = pd.NaT
    if pd.isna(ts):
        raise ConfigError(f"{key} must be a date or timestamp (e.g. 2026-08-07 or 2026-08-07T21:00Z), got {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def duration(value, key: str) -> pd.Timedelta | None:
    """``value`` as a positive duration (``4D``, ``12h``), ``None`` for null, or a :class:`ConfigError`."""
    if value is None:
        return None
    try:
        d = pd.Timedelta(str(value))
    except (ValueError, TypeError):
        d = pd.NaT
    if pd.isna(d) or d < pd.Timedelta(0):
        raise ConfigError(f"{key} must be a duration such as 4D or 12h (or null for any age), got {value!r}")
    return d
