"""Load and validate OHLCV CSV files.

Every problem is reported as a :class:`DataError` naming the file, the line
(1-based, the header is line 1) and what is wrong, so the command line can
print one clear line instead of a traceback.

Policies, stated once:

* **Header**: names are matched case-insensitively with spaces and dashes as
  ``_``; ``date``, ``datetime`` and ``time`` are aliases of ``timestamp``.
  Other extra columns are ignored. ``Adj Close`` is ignored when ``close`` is
  present (OHLC must be split-adjusted together) and refused when it is the
  only close: an adjusted close cannot be mixed with unadjusted open/high/low.
* **Time zones**: timestamps with a UTC offset are converted to UTC (offsets
  may differ, e.g. across daylight saving); timestamps without one are UTC.
  A file mixing the two is refused: the naive ones would be ambiguous. Each
  row's offset as written is kept in the ``utc_offset`` column (minutes east
  of UTC; 0 for ``Z`` and naive times): the trading calendar (weekdays, bars
  per day) is the market's own local one, not UTC's
  (:func:`src.data.market.infer_calendar`).
* **Gaps**: rows are consecutive bars whatever the clock says; the return
  from one row to the next is what a position held across the gap earns (a
  weekend, a holiday, a halt). Irregular session bars are accepted (Yahoo's
  hourly data opens with a 30-minute bar). A gap longer than ``max_gap`` is
  taken for missing data and refused; the number of gaps longer than 1.5 bars
  and the largest are recorded with every run.
* **Size**: files over ``max_file_mb`` are refused before reading (parsing
  takes several times the file size in memory).
* **Dividends**: an optional ``dividend`` (or ``dividends``) column holds the
  cash dividend per share on each ex-date's row (empty or 0 elsewhere); it is
  paid to longs and charged to shorts (:mod:`src.data.costs`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.errors import DataError

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
ALIASES = {"date": "timestamp", "datetime": "timestamp", "time": "timestamp", "dividends": "dividend"}
ADJUSTED_CLOSE = ("adj_close", "adjclose", "adjusted_close")
_UTC_OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$", re.IGNORECASE)

log = logging.getLogger(__name__)

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


def _offset_minutes(ts_text: pd.Series) -> np.ndarray:
    """Minutes east of UTC of each timestamp as written (``+01:00`` -> 60, ``Z`` or none -> 0)."""
    parts = ts_text.str.extract(r"([+-])(\d\d):?(\d\d)$")
    hours, minutes = (pd.to_numeric(parts[k], errors="coerce").fillna(0).to_numpy(np.float64) for k in (1, 2))
    return np.where(parts[0] == "-", -1.0, 1.0) * (hours * 60 + minutes)


def load_ohlcv(path: str | Path, max_gap: str | None = None, max_file_mb: float = 1024.0) -> pd.DataFrame:
    """Read an OHLCV CSV and validate it (see the module docstring for the policies).

    Args:
        path: CSV with header ``timestamp,open,high,low,close,volume`` (or an alias).
        max_gap: longest accepted interval between rows (pandas duration, e.g. ``"10D"``); None: no limit.
        max_file_mb: larger files are refused before reading.

    Returns:
        DataFrame with a UTC ``DatetimeIndex`` named ``timestamp`` and float64
        columns ``open, high, low, close, volume`` and ``utc_offset`` (minutes,
        as written).

    Raises:
        DataError: naming the file, line and problem.
    """
    p = resolve_path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    size_mb = p.stat().st_size / 2**20
    if size_mb > max_file_mb:
        raise DataError(
            f"{p}: file is {size_mb:,.0f} MiB, over env.max_file_mb={max_file_mb:g}; reading a CSV takes several "
            "times its size in memory: resample or cut the file, or raise env.max_file_mb if the memory is there"
        )
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{p}: not a valid CSV ({str(e).strip()})") from None
    return validate_ohlcv(raw, str(p), max_gap=max_gap)


def _canonical_columns(columns, name: str) -> list[str]:
    """Header names after case folding and aliases; refuses ambiguous or adjusted-only headers."""
    out, origin = [], {}
    for c in columns:
        key = re.sub(r"[\s\-]+", "_", str(c).strip().lower())
        key = ALIASES.get(key, key)
        if key in origin and key in COLUMNS:
            raise DataError(f"{name}: columns {origin[key]!r} and {str(c)!r} both name {key}; keep one")
        origin.setdefault(key, str(c))
        out.append(key)
    adjusted = [origin[k] for k in ADJUSTED_CLOSE if k in origin]
    if adjusted and "close" not in origin:
        raise DataError(
            f"{name}: has {adjusted[0]!r} but no close column; an adjusted close cannot be combined with "
            "unadjusted open/high/low: provide split-adjusted OHLC with a close column"
        )
    if adjusted:
        log.warning("%s: using close; %r is ignored (open/high/low/close must be adjusted together)", name, adjusted[0])
    return out


def validate_ohlcv(raw: pd.DataFrame, name: str, max_gap: str | None = None) -> pd.DataFrame:
    """Validate a frame of strings read from ``name``; see :func:`load_ohlcv`."""
    cols = _canonical_columns(raw.columns, name)
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; expected header {','.join(COLUMNS)}")
    raw = raw.set_axis(cols, axis=1)
    if len(raw) == 0:
        raise DataError(f"{name}: no data rows (header only)")

    ts_text = raw["timestamp"].str.strip()
    aware = ts_text.str.contains(_UTC_OFFSET).to_numpy()
    if aware.any() and not aware.all():
        i, j = _first(aware != aware[0]), 0
        kind = ("has a UTC offset", "has none") if aware[i] else ("has no UTC offset", "has one")
        raise DataError(
            f"{name}: line {_line(i)}: timestamp {ts_text.iloc[i]!r} {kind[0]} but line {_line(j)}'s "
            f"{ts_text.iloc[j]!r} {kind[1]}: mixed time zones; write every timestamp in UTC or with its offset"
        )
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
    if "dividend" in raw:  # cash per share on the ex-date's row; an empty cell is no dividend
        text = raw["dividend"].str.strip().replace("", "0")
        div = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(div) | (div < 0)
        if bad.any():
            i = _first(bad)
            raise DataError(
                f"{name}: line {_line(i)}: column dividend must be a number >= 0 (cash per share), "
                f"got {raw['dividend'].iloc[i]!r}"
            )
        values["dividend"] = div
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

    index = pd.DatetimeIndex(ts, name="timestamp")
    df = pd.DataFrame(values, index=index)
    df["utc_offset"] = _offset_minutes(ts_text)
    if len(df) > 2:
        step = pd.Series(index).diff()
        bar = step.median()
        if max_gap is not None:
            limit = pd.Timedelta(max_gap)
            long = (step > limit).to_numpy()
            if long.any():
                i = _first(long)
                raise DataError(
                    f"{name}: line {_line(i)}: {step.iloc[i]} gap after {ts_text.iloc[i - 1]} is longer than "
                    f"env.max_gap={max_gap}: missing data? fill or cut the file, or raise env.max_gap"
                )
        gaps = step > 1.5 * bar
        df.attrs["gaps"] = int(gaps.sum())
        df.attrs["largest_gap"] = str(step.max())
    return df
