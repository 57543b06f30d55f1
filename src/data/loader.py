"""Load and validate OHLCV CSV files.

Every problem is reported as a :class:`DataError` naming the file, the line
(1-based, the header is line 1) and what is wrong, so the command line can
print one clear line instead of a traceback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import DataError

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """Resolve a data path: absolute, relative to the working directory, or to the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return _PROJECT_ROOT / p


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, recorded with every run so results name their exact data."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _line(i: int) -> int:
    """File line of data row ``i`` (0-based), counting the header as line 1."""
    return int(i) + 2


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def load_ohlcv(path: str | Path) -> pd.DataFrame:
    """Read an OHLCV CSV and validate it.

    Args:
        path: CSV with header ``timestamp,open,high,low,close,volume``.

    Returns:
        DataFrame with a UTC ``DatetimeIndex`` named ``timestamp`` and float64
        columns ``open, high, low, close, volume``.

    Raises:
        DataError: naming the file, line and problem.
    """
    p = resolve_path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{p}: not a valid CSV ({str(e).strip()})") from None
    return validate_ohlcv(raw, str(p))


def validate_ohlcv(raw: pd.DataFrame, name: str) -> pd.DataFrame:
    """Validate a frame of strings read from ``name``; see :func:`load_ohlcv`."""
    cols = [str(c).strip() for c in raw.columns]
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; expected header {','.join(COLUMNS)}")
    raw = raw.set_axis(cols, axis=1)
    if len(raw) == 0:
        raise DataError(f"{name}: no data rows (header only)")

    ts_text = raw["timestamp"].str.strip()
    ts = pd.to_datetime(ts_text, utc=True, errors="coerce", format="ISO8601")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = _first(bad)
        raise DataError(f"{name}: line {_line(i)}: unparsable timestamp {ts_text.iloc[i]!r}")
    tsv = ts.to_numpy()
    dup = pd.Series(tsv).duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        j = _first(tsv == tsv[i])
        raise DataError(f"{name}: line {_line(i)}: duplicate timestamp {ts_text.iloc[i]} (first on line {_line(j)})")
    back = tsv[1:] <= tsv[:-1]
    if back.any():
        i = _first(back) + 1
        raise DataError(
            f"{name}: line {_line(i)}: timestamp {ts_text.iloc[i]} is not after the previous row's "
            f"{ts_text.iloc[i - 1]} (rows must be in increasing time order)"
        )

    values = {}
    for c in COLUMNS[1:]:
        num = pd.to_numeric(raw[c].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(num)
        if bad.any():
            i = _first(bad)
            raise DataError(
                f"{name}: line {_line(i)}: column {c} has non-numeric, empty, NaN or inf value {raw[c].iloc[i]!r}"
            )
        values[c] = num
    for c in PRICE_COLUMNS:
        bad = values[c] <= 0
        if bad.any():
            i = _first(bad)
            raise DataError(f"{name}: line {_line(i)}: non-positive {c} price {values[c][i]}")
    bad = values["volume"] < 0
    if bad.any():
        i = _first(bad)
        raise DataError(f"{name}: line {_line(i)}: negative volume {values['volume'][i]}")
    o, h, lo, c = (values[k] for k in PRICE_COLUMNS)
    checks = (
        (h < lo, "high {h} is below low {lo}"),
        ((o > h) | (o < lo), "open {o} is outside [low {lo}, high {h}]"),
        ((c > h) | (c < lo), "close {c} is outside [low {lo}, high {h}]"),
    )
    for bad, msg in checks:
        if bad.any():
            i = _first(bad)
            raise DataError(f"{name}: line {_line(i)}: " + msg.format(o=o[i], h=h[i], lo=lo[i], c=c[i]))

    df = pd.DataFrame(values, index=pd.DatetimeIndex(ts, name="timestamp"))
    return df
