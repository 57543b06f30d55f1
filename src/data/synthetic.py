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

from src.core.errors import ConfigError
from src.data.market import Market, build_market


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
    return synthetic_bars(open_, close, sig, 20 * np.abs(ret), rng, start)


def synthetic_bars(open_, close, sig, volume_push, rng: np.random.Generator, start: str) -> pd.DataFrame:
    """OHLCV frame on business days: wicks of ~``sig`` around open and close, lognormal volume (x e^push)."""
    n_bars = len(close)
    wick = sig * np.abs(rng.standard_normal((2, n_bars))) * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_bars) + volume_push))
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


def planted_bars(
    n_bars: int = 3000, rho: float = 0.2, vol: float = 0.01, seed: int = 0, start: str = "2000-01-03"
) -> pd.DataFrame:
    """A market with a planted, learnable signal: close-to-close log returns follow an AR(1),
    ``r_t = rho r_(t-1) + vol sqrt(1 - rho^2) e_t``, so the sign of the last return (the ``ret_1`` feature)
    predicts the next one: holding ``sign(r_t)`` earns ~``rho sqrt(2 / pi)`` of a bar's std per bar (the oracle).
    Bars open at the previous close (no gap), so a fill at the next open is a fill at the decision's close."""
    if n_bars < 100:
        raise ConfigError(f"env.n_bars must be >= 100, got {n_bars}")
    if not -1 < rho < 1 or vol <= 0:
        raise ConfigError(f"env.rho must be in (-1, 1) and env.vol > 0, got {rho}, {vol}")
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n_bars)
    ret = np.empty(n_bars)
    ret[0] = vol * eps[0]
    for i in range(1, n_bars):
        ret[i] = rho * ret[i - 1] + vol * np.sqrt(1 - rho**2) * eps[i]
    close = 100.0 * np.exp(np.cumsum(ret))
    return synthetic_bars(np.concatenate([[100.0], close[:-1]]), close, vol, 0.0, rng, start)


def planted_market(
    name: str = "planted",
    n_bars: int = 3000,
    rho: float = 0.2,
    vol: float = 0.01,
    seed: int = 0,
    max_gap: str | None = None,
    max_file_mb: float | None = None,
    **kwargs,
) -> Market:
    """:func:`planted_bars` as a :class:`Market` (``env=planted``); ``kwargs`` go to :func:`build_market`."""
    bars = planted_bars(n_bars, rho, vol, seed)
    digest = hashlib.sha256(pd.util.hash_pandas_object(bars).to_numpy().tobytes()).hexdigest()
    source = f"planted(rho={rho}, vol={vol}, seed={seed}, n_bars={n_bars})"
    return build_market(bars, name=name, source=source, data_hash=digest, **kwargs)
