"""The bars a deployed agent acts on: refusing a file it was not trained for, and observing it as training did.

Shared by ``src.predict`` and ``src.paper``: the history must be long enough for the features' averages, of the
checkpoint's bar size and ticker, complete and fresh; the features are normalised with the checkpoint's own
training statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from src.core.errors import ConfigError, DataError
from src.data.features import compute_features
from src.data.market import NORM_CLIP, infer_calendar, local_time
from src.data.universe import ticker_name

POSITION_FORMAT = '{"weight": <a finite number>, "as_of": "<date of a bar>"}'
MIN_HISTORY = 200  # rows: past ~100 the features' EMA seeds are below 0.001 training std (measured), past 200 nil


def check_bars(bars: pd.DataFrame, path: str, norm: dict, now: pd.Timestamp, max_stale, other_ticker: bool):
    """The last complete bar's end, after refusing a short history, another bar size or ticker, an incomplete or a
    stale bar."""
    if len(bars) < MIN_HISTORY:
        raise DataError(f"{path}: {len(bars)} rows; the features' exponential averages need at least {MIN_HISTORY} "
                        "bars of history to match training's (a shorter file observes other values)")  # fmt: skip
    step = pd.Series(bars.index).diff().median()
    if "bar_seconds" in norm:  # the training file's median interval (a set env.bars_per_year cannot mislead it)
        if abs(step.total_seconds() - norm["bar_seconds"]) > 0.01 * norm["bar_seconds"]:
            raise DataError(f"{path}: bars every {step}, the checkpoint was trained on bars every "
                            f"{pd.Timedelta(seconds=norm['bar_seconds'])} (another bar size)")  # fmt: skip
    else:
        per_year, _ = infer_calendar(local_time(bars), path)
        if abs(per_year - float(norm["bars_per_year"])) > 1e-6 * per_year:
            raise DataError(f"{path}: {per_year:g} bars a year, the checkpoint was trained on "
                            f"{float(norm['bars_per_year']):g} (another bar size)")  # fmt: skip
    trained = ticker_name(norm.get("source", "")) if norm.get("source") else None
    if trained and ticker_name(path) != trained and not other_ticker:
        raise DataError(f"{path}: ticker {ticker_name(path)!r}, the checkpoint was trained on {trained!r}; "
                        "allow_other_ticker=true to apply it anyway")  # fmt: skip
    end = bars.index[-1] + step
    if now < end:
        raise DataError(f"{path}: the last bar ({bars.index[-1]}) is incomplete until {end} (now {now}); "
                        "wait for it, or drop the partial row")  # fmt: skip
    if max_stale is not None and now - end > pd.Timedelta(max_stale):
        raise DataError(f"{path}: the last bar ({bars.index[-1]}) ended {now - end} before now ({now}), over "
                        f"max_stale={max_stale}: refresh the file, or max_stale=null to use it anyway")  # fmt: skip
    return end


def normalised_features(bars: pd.DataFrame, norm: dict) -> torch.Tensor:
    """(T, F): every bar's causal features, normalised with the checkpoint's training statistics (as
    :func:`src.data.market.build_market` normalises its own)."""
    x = compute_features(bars).to_numpy(np.float64)
    z = np.clip((x - np.asarray(norm["mean"])) / np.asarray(norm["std"]), -NORM_CLIP, NORM_CLIP)
    return torch.as_tensor(z, dtype=torch.float32)


def observation(bars: pd.DataFrame, norm: dict, path: str) -> torch.Tensor:
    """(1, window, F): the last ``window`` feature rows, normalised with the checkpoint's statistics."""
    w = int(norm["window"])
    z = normalised_features(bars, norm)[-w:]
    if len(bars) < w + 35 or not torch.isfinite(z).all():
        raise DataError(f"{path}: {len(bars)} rows are too few for a {w}-bar window after the feature warm-up")
    return z[None]


def drifted_weight(position: dict, bars: pd.DataFrame, path: str) -> float:
    """The weight of ``position`` (held at the close of its ``as_of`` bar), drifted with the closes to the last bar."""
    try:
        w, as_of = float(position["weight"]), pd.Timestamp(position["as_of"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"position: expected {POSITION_FORMAT}") from None
    if not math.isfinite(w) or pd.isna(as_of):
        raise ConfigError(f"position: the weight must be a finite number and as_of a date, got {position!r}")
    close = bars["close"].to_numpy()
    g = close[-1] / close[bar_at(bars, as_of, path, "position as_of")]  # the asset's growth since; cash stays
    return float(w * g / (1 + w * (g - 1)))


def bar_at(bars: pd.DataFrame, when, path: str, what: str) -> int:
    """The row of the bar at ``when``: its exact timestamp, or a date that names one bar of the file."""
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ts in bars.index:
        return int(bars.index.get_loc(ts))
    same = (local_time(bars).normalize() == ts.tz_localize(None).normalize()).nonzero()[0]
    if len(same) == 1 and ts == ts.normalize():
        return int(same[0])
    raise DataError(f"{path}: {what} {when} is not a bar of the file (give its timestamp)")
