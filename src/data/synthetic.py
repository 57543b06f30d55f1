"""A generated market for fast tests and controlled experiments.

Regime-switching geometric Brownian motion: a hidden Markov chain picks the
drift and volatility of each bar (bull, bear, calm), so there is structure a
policy can learn (regimes persist) while the path stays a random walk within
a regime. Bars carry an overnight gap, so open != previous close, and
high/low bracket open and close.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from src.data.market import Market, build_market
from src.errors import ConfigError


def generate_bars(
    n_bars: int = 3000,
    seed: int = 0,
    drifts: tuple[float, ...] = (0.0015, -0.0015, 0.0),
    vols: tuple[float, ...] = (0.015, 0.025, 0.008),
    stay: float = 0.98,
    gap_frac: float = 0.3,
    start: str = "2000-01-03",
) -> pd.DataFrame:
    """OHLCV bars on business days; daily log-return ~ N(drift[k], vol[k]) in regime k."""
    if n_bars < 100:
        raise ConfigError(f"env.n_bars must be >= 100, got {n_bars}")
    if len(drifts) != len(vols):
        raise ConfigError("env.drifts and env.vols must have the same length")
    rng = np.random.default_rng(seed)
    k = len(drifts)
    regime = np.empty(n_bars, dtype=np.int64)
    regime[0] = 0
    switch = rng.random(n_bars) > stay
    jumps = rng.integers(1, k, n_bars) if k > 1 else np.zeros(n_bars, dtype=np.int64)
    for i in range(1, n_bars):
        regime[i] = (regime[i - 1] + jumps[i]) % k if switch[i] else regime[i - 1]
    mu, sig = np.asarray(drifts)[regime], np.asarray(vols)[regime]
    ret = mu + sig * rng.standard_normal(n_bars)
    gap = gap_frac * ret + np.sqrt(gap_frac) * 0.2 * sig * rng.standard_normal(n_bars)
    close = 100.0 * np.exp(np.cumsum(ret))
    prev_close = np.concatenate([[100.0], close[:-1]])
    open_ = prev_close * np.exp(gap)
    wick = sig * np.abs(rng.standard_normal((2, n_bars))) * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_bars) + 20 * np.abs(ret)))
    idx = pd.bdate_range(start, periods=n_bars, tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=idx)


def synthetic_market(
    name: str = "synthetic",
    n_bars: int = 3000,
    seed: int = 0,
    drifts: tuple[float, ...] = (0.0015, -0.0015, 0.0),
    vols: tuple[float, ...] = (0.015, 0.025, 0.008),
    stay: float = 0.98,
    max_gap: str | None = None,
    max_file_mb: float | None = None,
    **kwargs,
) -> Market:
    """Generate bars and build a :class:`Market`; ``kwargs`` go to :func:`build_market`.

    ``max_gap`` and ``max_file_mb`` are file-loading limits from ``env/base.yaml``; generated bars have no file.
    """
    bars = generate_bars(n_bars, seed, tuple(drifts), tuple(vols), stay)
    digest = hashlib.sha256(pd.util.hash_pandas_object(bars).to_numpy().tobytes()).hexdigest()
    return build_market(bars, name=name, source=f"synthetic(seed={seed}, n_bars={n_bars})", data_hash=digest, **kwargs)
