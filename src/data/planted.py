"""Planted-signal markets: generated OHLCV with a known, learnable edge and the policy that knows it (the oracle).

Each ``kind`` is an ``env=`` option (``conf/env/<kind>.yaml``) and a row of the suite (:mod:`src.suite`). Close-to-
close log returns ``r_t`` are generated, bars open at the previous close (so a fill at the next open is a fill at
the decision's close), and the oracle's target weight for bar t+1 is decided from the generator's state at bar t.
The oracle knows the next return's conditional mean ``mu_t`` and volatility ``sigma_{t+1}`` and holds the
mean-variance position ``mu_t / sigma_{t+1}^2`` (the Sharpe-optimal one, before costs and the cap), scaled so that a
typical ``mu`` at the typical volatility holds half the position limit, capped at +-1. It ignores costs when it
decides, so an agent that trades less can beat it on a path: it is the edge's reference, not a bound.

- ``momentum``: AR(1), ``r_t = rho r_{t-1} + vol sqrt(1 - rho^2) e_t`` with ``rho = strength`` (> 0), so
  ``mu_t = rho r_t``; ``mean_reversion``: the same with ``rho = -strength``.
- ``ou_trend``: log price = a slow trend (``trend`` per bar) + an Ornstein-Uhlenbeck deviation,
  ``x_{t+1} = (1 - theta) x_t + vol e``, ``theta = strength``; ``mu_t = trend - theta x_t``.
- ``regime``: a hidden two-state Markov chain (persistence ``stay``) sets the drift ``+-strength`` of each bar's
  return (noise ``vol``); the agent can see a regime only with a lag (through its momentum features); the oracle
  knows the current one (an upper bound on what a lagged observer can know).
- ``vol_clustering``: GARCH(1,1) returns with a small drift ``strength`` (long-run std ``vol``); the oracle is long
  and sizes by the predicted variance (``mu`` is constant, ``sigma_{t+1}`` known at t).
- ``null``: iid returns with no drift: no edge. The oracle stays flat; no agent's test Sharpe may be significantly
  above 0 (one test path's drift can still reward a lean that all members share).

The oracle's Sharpe is measured after costs through the same env and accounting as the agent's
(:func:`src.evaluation.oracle.oracle_results`), never assumed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from src.core.errors import ConfigError
from src.data.market import Market, build_market
from src.data.synthetic import synthetic_bars

KINDS = ("momentum", "mean_reversion", "ou_trend", "regime", "vol_clustering", "null")


def planted_returns(
    kind: str, n_bars: int, strength: float, vol: float, seed: int, trend: float = 3e-4, stay: float = 0.98
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returns r_t, the oracle's weight decided at bar t, each bar's return std) of a ``kind`` market."""
    if kind not in KINDS:
        raise ConfigError(f"env.kind must be one of {KINDS}, got {kind!r}")
    if n_bars < 100 or vol <= 0:
        raise ConfigError(f"env.n_bars must be >= 100 and env.vol > 0, got {n_bars}, {vol}")
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n_bars)
    sig = np.full(n_bars, vol)
    if kind in ("momentum", "mean_reversion"):
        rho = strength if kind == "momentum" else -strength
        if not -1 < rho < 1:
            raise ConfigError(f"env.strength (the AR coefficient's size) must be in [0, 1), got {strength}")
        r = np.empty(n_bars)
        r[0] = vol * e[0]
        for i in range(1, n_bars):
            r[i] = rho * r[i - 1] + vol * np.sqrt(1 - rho**2) * e[i]
        return r, _mean_variance(rho * r, abs(rho) * vol, sig, vol), sig
    if kind == "ou_trend":
        if not 0 < strength < 1:
            raise ConfigError(f"env.strength (the OU reversion speed theta) must be in (0, 1), got {strength}")
        x = np.zeros(n_bars)
        for i in range(1, n_bars):
            x[i] = (1 - strength) * x[i - 1] + vol * e[i]
        lp = trend * np.arange(n_bars) + x
        r = np.diff(lp, prepend=0.0)
        spread = vol / np.sqrt(strength * (2 - strength))  # the OU deviation's stationary std
        return r, _mean_variance(trend - strength * x, np.hypot(trend, strength * spread), sig, vol), sig
    if kind == "regime":
        if not 0 < stay < 1:
            raise ConfigError(f"env.stay must be in (0, 1), got {stay}")
        flip = rng.random(n_bars) > stay
        state = np.where(np.cumsum(flip) % 2 == 0, 1.0, -1.0)
        return state * strength + vol * e, _mean_variance(state * strength, strength, sig, vol), sig
    if kind == "vol_clustering":
        alpha, beta = 0.1, 0.85
        omega = vol**2 * (1 - alpha - beta)
        s2, r = np.empty(n_bars), np.empty(n_bars)
        s2[0] = vol**2
        for i in range(n_bars):
            if i:
                s2[i] = omega + alpha * (r[i - 1] - strength) ** 2 + beta * s2[i - 1]
            r[i] = strength + np.sqrt(s2[i]) * e[i]
        nxt = omega + alpha * (r - strength) ** 2 + beta * s2  # sigma^2 of bar t + 1, known at bar t
        return r, _mean_variance(np.full(n_bars, strength), strength, np.sqrt(nxt), vol), np.sqrt(s2)
    return vol * e, np.zeros(n_bars), sig  # null


def _mean_variance(mu: np.ndarray, typical: float, sigma_next: np.ndarray, vol: float) -> np.ndarray:
    """The oracle's weight for bar t + 1: the mean-variance position ``mu / sigma^2`` on the known conditional mean
    ``mu`` and volatility ``sigma_next`` of the next return, scaled so that a typical ``mu`` (``typical``, its
    root mean square) at the typical volatility ``vol`` holds half the limit, and capped at +-1."""
    if typical <= 0:
        return np.zeros_like(mu)
    return np.clip(mu / (2 * typical) * (vol / sigma_next) ** 2, -1.0, 1.0)


def planted_suite_market(
    kind: str = "momentum",
    name: str | None = None,
    n_bars: int = 3000,
    strength: float = 0.15,
    vol: float = 0.01,
    seed: int = 0,
    trend: float = 3e-4,
    stay: float = 0.98,
    start: str = "2000-01-03",
    max_gap: str | None = None,
    max_file_mb: float | None = None,
    **kwargs,
) -> Market:
    """A ``kind`` market (see the module docstring) with its oracle's weights on ``market.oracle``."""
    r, oracle, sig = planted_returns(kind, n_bars, strength, vol, seed, trend, stay)
    rng = np.random.default_rng(seed + 1)
    close = 100.0 * np.exp(np.cumsum(r))
    bars = synthetic_bars(np.concatenate([[100.0], close[:-1]]), close, sig, 0.0, rng, start)
    digest = hashlib.sha256(pd.util.hash_pandas_object(bars).to_numpy().tobytes()).hexdigest()
    source = f"planted {kind}(strength={strength}, vol={vol}, seed={seed}, n_bars={n_bars})"
    market = build_market(bars, name=name or kind, source=source, data_hash=digest, **kwargs)
    market.oracle = pd.Series(oracle, index=bars.index).reindex(market.bars.index).to_numpy()
    return market
