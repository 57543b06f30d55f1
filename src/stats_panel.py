"""The pooled verdict of a universe: does the agent beat buy-and-hold across the tickers, on the same dates?

The statistic is the mean over K tickers of the annualised Sharpe difference, agent minus buy-and-hold, each
measured on the same bars (:func:`src.stats.sharpe_difference_test` for one ticker). Tickers are not
independent: on a day the market falls, most fall, and the agent's results on them move together. So the
per-ticker tests cannot be combined as K independent ones, nor the K differences t-tested as if they were K
samples. The mean difference's influence series is the average, date by date, of the tickers' own influence
series (Ledoit & Wolf's delta method, linear in them); its long-run (HAC) variance over dates counts every
covariance between tickers on the same and nearby dates, as a block bootstrap over dates that resamples all
tickers together would, without resampling. Calibrated by simulation (:func:`panel_rates`, tests).
"""

from __future__ import annotations

import math

import numpy as np

from src.calibration import DAILY_VOL, _mu, garch_paths
from src.stats import _difference_result, sharpe_difference_influence

__all__ = ["panel_paths", "panel_rates", "panel_sharpe_difference_test"]


def panel_sharpe_difference_test(
    agent: np.ndarray,
    benchmark: np.ndarray,
    bars_per_year: float,
    level: float = 0.95,
    bandwidth: float | None = None,
    prewhiten: bool = True,
) -> dict[str, float]:
    """Inference on the mean over tickers of SR(agent) − SR(benchmark), for (T, K) return panels on shared dates.

    Returns the annualised mean difference ``diff``, its ``se``, ``z``, the one-sided ``p_value`` of "the agent
    is no better on average" and the two-sided ``level`` interval, as the one-ticker test does; a date missing
    for a ticker (NaN) is refused: pass the dates every ticker has.
    """
    a, b = np.asarray(agent, dtype=np.float64), np.asarray(benchmark, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"the panel test needs two (dates, tickers) panels of one shape, got {a.shape}, {b.shape}")
    n, k = a.shape
    if n < 10 or k < 1:
        raise ValueError(f"the panel test needs at least 10 dates and 1 ticker, got {n} x {k}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the panel has missing returns: pass the dates that every ticker has")
    parts = [sharpe_difference_influence(a[:, j], b[:, j]) for j in range(k)]
    diff = sum(p[0] for p in parts) / k
    psi = sum(p[1] for p in parts) / k
    scale = max(p[2] for p in parts) / k
    return _difference_result(diff, psi, scale, bars_per_year, level, bandwidth, prewhiten)


def panel_paths(sims: int, k: int = 9, n: int = 376, edge: float = 0.0, rho: float = 0.6, seed: int = 0):
    """(sims, n, k) agent and buy-and-hold panels: every ticker's buy-and-hold has an annual Sharpe of 0.7, its
    agent 0.7 + ``edge``; tickers share a market factor (correlation ``rho`` between tickers), each agent is
    correlated 0.5 with its ticker, and shocks are t(5) with GARCH(1, 1) volatility driven by the market."""
    rng = np.random.default_rng(seed)
    t5 = lambda *s: rng.standard_t(5, s) / math.sqrt(5 / 3)  # noqa: E731  unit-variance fat tails
    market = t5(sims, n, 1)
    asset = math.sqrt(rho) * market + math.sqrt(1 - rho) * t5(sims, n, k)
    own = 0.5 * asset + math.sqrt(0.75) * (math.sqrt(rho) * t5(sims, n, 1) + math.sqrt(1 - rho) * t5(sims, n, k))
    vol = (garch_paths(market[:, :, 0]) / market[:, :, 0])[:, :, None]  # the market's GARCH volatility, shared
    bench = _mu(0.7) + DAILY_VOL * vol * asset
    agent = _mu(0.7 + edge) + DAILY_VOL * vol * own
    return agent, bench


def panel_rates(sims: int, edge: float = 0.0, seed: int = 0, level: float = 0.95, **kwargs) -> dict[str, float]:
    """How often the pooled test rejects "no better on average" at ``1 - level`` (its false-positive rate when
    ``edge`` is 0) and how often its interval covers ``edge``; for contrast, how often a one-sample t-test on
    the K per-ticker differences (tickers taken as independent) rejects."""
    from scipy.stats import ttest_1samp

    from src.stats import sharpe_difference_test

    a, b = panel_paths(sims, edge=edge, seed=seed, **kwargs)
    reject = cover = naive = 0
    for x, y in zip(a, b, strict=True):
        r = panel_sharpe_difference_test(x, y, 252, level)
        reject += r["p_value"] <= 1 - level
        cover += r["ci_low"] <= edge <= r["ci_high"]
        d = [sharpe_difference_test(x[:, j], y[:, j], 252)["diff"] for j in range(x.shape[1])]
        naive += ttest_1samp(d, 0.0, alternative="greater").pvalue <= 1 - level
    return {"reject": reject / sims, "cover": cover / sims, "naive_t": naive / sims}
