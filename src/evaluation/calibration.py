"""Null and planted-edge simulations that calibrate the tests of :mod:`src.evaluation.stats`.

A test or interval is only as honest as its false-positive rate under a null. The unit tests run these
simulators with a few hundred draws and assert the rates; ``experiments/statistics_calibration`` runs
them with thousands and reports every rate with its binomial 95% interval. Returns are daily-like
(2% volatility, 252 bars a year) over 604 bars, the length of the TSLA test period.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta as beta_dist

from src.evaluation.metrics import sharpe_ratio
from src.evaluation.panel import panel_sharpe_difference_test
from src.evaluation.stats import deflated_sharpe_ratio, probabilistic_sharpe_ratio, sharpe_difference_test

DAILY_VOL = 0.02
BARS = 604
PAIR_KINDS = ("independent", "correlated", "garch", "autocorrelated")


def _mu(annual_sharpe: float) -> float:
    return annual_sharpe / math.sqrt(252) * DAILY_VOL


def garch_paths(z: np.ndarray, omega: float = 0.02, alpha: float = 0.08, beta: float = 0.9) -> np.ndarray:
    """(sims, n) GARCH(1, 1) paths driven by the shocks ``z``: volatility clustering, unit long-run variance."""
    sims, n = z.shape
    out, h = np.empty((sims, n)), np.ones(sims)
    for t in range(n):
        out[:, t] = np.sqrt(h) * z[:, t]
        h = omega + alpha * out[:, t] ** 2 + beta * h
    return out


def ar_paths(z: np.ndarray, phi: float) -> np.ndarray:
    """(sims, n) AR(1) paths with coefficient ``phi`` and unit variance, driven by the shocks ``z``."""
    out = np.empty_like(z)
    out[:, 0] = z[:, 0]
    for t in range(1, z.shape[1]):
        out[:, t] = phi * out[:, t - 1] + math.sqrt(1 - phi**2) * z[:, t]
    return out


def paired_paths(kind: str, sims: int, edge: float = 0.0, seed: int = 0, n: int = BARS):
    """(agent, buy-and-hold) return paths: buy-and-hold has an annual Sharpe of 0.7, the agent 0.7 + ``edge``.

    ``independent``: i.i.d. normal, uncorrelated; ``correlated``: i.i.d. normal, correlation 0.7 (an agent
    that mostly holds the asset); ``garch``: fat-tailed t(5) shocks with GARCH(1, 1) volatility, correlation
    0.5 (what daily returns look like); ``autocorrelated``: AR(1) returns (0.3 from one bar to the next),
    correlation 0.5 (an agent whose P&L trends: what an i.i.d. standard error gets wrong).
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"kind must be one of {PAIR_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "garch":
        e = rng.standard_t(5, (2, sims, n)) / math.sqrt(5 / 3)
        x1 = garch_paths(e[0])
        x2 = garch_paths(0.5 * e[0] + math.sqrt(0.75) * e[1])
    elif kind == "autocorrelated":
        e = rng.normal(size=(2, sims, n))
        x1, x2 = ar_paths(e[0], 0.3), ar_paths(0.5 * e[0] + math.sqrt(0.75) * e[1], 0.3)
    else:
        rho = 0.7 if kind == "correlated" else 0.0
        e = rng.normal(size=(2, sims, n))
        x1, x2 = e[0], rho * e[0] + math.sqrt(1 - rho**2) * e[1]
    return _mu(0.7 + edge) + DAILY_VOL * x2, _mu(0.7) + DAILY_VOL * x1


def paired_rates(
    kind: str, sims: int, edge: float = 0.0, seed: int = 0, level: float = 0.95, **test_kwargs
) -> dict[str, float]:
    """How often the paired test rejects "agent <= buy-and-hold" at ``1 - level``, how often its two-sided
    interval covers the true difference, and, for contrast, how often the old rule (PSR against
    buy-and-hold's sample Sharpe taken as known) said ``>= level``. ``test_kwargs`` go to the test
    (``bandwidth=0, prewhiten=False``: the i.i.d. delta method, for contrast)."""
    a, b = paired_paths(kind, sims, edge, seed)
    reject = cover = old = 0
    for x, y in zip(a, b, strict=True):
        r = sharpe_difference_test(x, y, 252, level, **test_kwargs)
        reject += r["p_value"] <= 1 - level
        cover += r["ci_low"] <= edge <= r["ci_high"]
        old += probabilistic_sharpe_ratio(x, sharpe_ratio(y, 252), 252) >= level
    return {"reject": reject / sims, "cover": cover / sims, "old_psr": old / sims}


def null_checks(rng: np.random.Generator, trials: int, checks: int, phi: float, n: int = 600) -> np.ndarray:
    """(trials, checks, n) validation returns of unskilled checkpoints: a trial's consecutive checks are
    AR(1)-correlated from one check to the next (``phi``), trials independent."""
    z = rng.normal(size=(trials * n, checks))  # the AR runs across checks, bar by bar
    return 0.01 * ar_paths(z, phi).reshape(trials, n, checks).transpose(0, 2, 1)


def annual_sharpes(x: np.ndarray) -> np.ndarray:
    return x.mean(-1) / x.std(-1, ddof=1) * math.sqrt(252)


def selection_rates(trials: int, checks: int, phi: float, sims: int, seed: int = 0) -> dict[str, float]:
    """P(DSR >= 0.95) with no skill anywhere, for the rules old and new.

    One trial (a run): ``new`` deflates by every check; ``old`` by the checks up to the selected one (what a
    loaded ``best.ckpt`` remembered). Several trials (a sweep): ``new`` deflates by every check of every
    trial with effective trials; ``old`` by the trials' best values with N = the number of trials.
    """
    rng = np.random.default_rng(seed)
    new = old = 0
    for _ in range(sims):
        r = null_checks(rng, trials, checks, phi)
        s = annual_sharpes(r)
        i, j = np.unravel_index(np.argmax(s), s.shape)
        if trials == 1:
            new += deflated_sharpe_ratio(r[0, j], list(s[0]), 252) >= 0.95
            hist = list(s[0, : j + 1])
            old += (
                deflated_sharpe_ratio(r[0, j], hist, 252) if j else probabilistic_sharpe_ratio(r[0, j], 0, 252)
            ) >= 0.95
        else:
            new += deflated_sharpe_ratio(r[i, j], [list(g) for g in s], 252) >= 0.95
            old += deflated_sharpe_ratio(r[i, j], list(s.max(axis=1)), 252) >= 0.95
    return {"new": new / sims, "old": old / sims}


def binomial_interval(hits: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate ``hits`` (a fraction) measured on ``n`` draws."""
    k = round(hits * n)
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return lo, hi


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

    a, b = panel_paths(sims, edge=edge, seed=seed, **kwargs)
    reject = cover = naive = 0
    for x, y in zip(a, b, strict=True):
        r = panel_sharpe_difference_test(x, y, 252, level)
        reject += r["p_value"] <= 1 - level
        cover += r["ci_low"] <= edge <= r["ci_high"]
        d = [sharpe_difference_test(x[:, j], y[:, j], 252)["diff"] for j in range(x.shape[1])]
        naive += ttest_1samp(d, 0.0, alternative="greater").pvalue <= 1 - level
    return {"reject": reject / sims, "cover": cover / sims, "naive_t": naive / sims}
