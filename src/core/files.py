"""Files that are whole or absent: atomic writes, and values JSON can hold."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to ``path.tmp`` then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no inf/nan: null, see src/evaluation/metrics.py for when a ratio is undefined
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x
