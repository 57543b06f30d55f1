"""The pooled verdict of a universe: does the agent beat buy-and-hold across the tickers, on the same dates?

The statistic is the mean over K tickers of the annualised Sharpe difference, agent minus buy-and-hold, each
measured on the same bars (:func:`src.evaluation.stats.sharpe_difference_test` for one ticker). Tickers are not
independent: on a day the market falls, most fall, and the agent's results on them move together. So the
per-ticker tests cannot be combined as K independent ones, nor the K differences t-tested as if they were K
samples. The mean difference's influence series is the average, date by date, of the tickers' own influence
series (Ledoit & Wolf's delta method, linear in them); its long-run (HAC) variance over dates counts every
covariance between tickers on the same and nearby dates, as a block bootstrap over dates that resamples all
tickers together would, without resampling. Calibrated by simulation
(:func:`src.evaluation.calibration.panel_rates`, tests).
"""

from __future__ import annotations

import numpy as np

from src.evaluation.stats import difference_result, sharpe_difference_influence


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
    return difference_result(diff, psi, scale, bars_per_year, level, bandwidth, prewhiten)
