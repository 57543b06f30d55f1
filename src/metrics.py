"""Performance metrics: the one place every reported figure is computed.

Inputs are per-bar series from an evaluation: simple net returns ``r_t``
(after costs), the weight held during the bar and the turnover traded at its
fill. Conventions (stated once, here):

- risk-free rate 0; annualisation by the market's bars per year ``B``;
- Sharpe = mean(r) / std(r, ddof=1) * sqrt(B); 0 when std is 0;
- Sortino = mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(B); 0 when there is no downside;
- annualised return = (1 + total)^(B / n) - 1 (geometric, CAGR);
- max drawdown = max_t (1 - E_t / max_{s<=t} E_s) with E_0 = 1, a positive fraction;
- Calmar = annualised return / max drawdown; 0 when there is no drawdown;
- win rate and profit factor over bars *in the market* (|weight| > 0):
  share of positive bars, and sum of gains / |sum of losses| (inf with no loss);
- trades = bars on which anything was traded; turnover = annualised sum of
  |weight change|; exposure = mean |weight|.
"""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = (
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "win_rate",
    "profit_factor",
    "trades",
    "turnover",
    "exposure",
    "final_equity",
    "bars",
)


def max_drawdown(returns: np.ndarray) -> float:
    """Largest peak-to-trough loss of the equity curve built from ``returns`` (starting at 1)."""
    equity = np.concatenate([[1.0], np.cumprod(1 + np.asarray(returns, dtype=np.float64))])
    peak = np.maximum.accumulate(equity)
    return float(np.max(1 - equity / peak))


def sharpe_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2:
        return 0.0
    sd = r.std(ddof=1)
    return 0.0 if sd == 0 else float(r.mean() / sd * math.sqrt(bars_per_year))


def compute_metrics(
    returns: np.ndarray, positions: np.ndarray, turnover: np.ndarray, bars_per_year: float
) -> dict[str, float]:
    """All metrics of one equity path; see the module docstring for each definition."""
    r = np.asarray(returns, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    turn = np.asarray(turnover, dtype=np.float64)
    n = len(r)
    if n == 0:
        raise ValueError("compute_metrics needs at least one bar")
    total = float(np.prod(1 + r) - 1)
    annual = (1 + total) ** (bars_per_year / n) - 1 if total > -1 else -1.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0) ** 2)))
    mdd = max_drawdown(r)
    live = r[np.abs(pos) > 0]
    gains, losses = live[live > 0].sum(), -live[live < 0].sum()
    return {
        "total_return": total,
        "annual_return": float(annual),
        "annual_volatility": float(r.std(ddof=1) * math.sqrt(bars_per_year)) if n > 1 else 0.0,
        "sharpe": sharpe_ratio(r, bars_per_year),
        "sortino": 0.0 if downside == 0 else float(r.mean() / downside * math.sqrt(bars_per_year)),
        "max_drawdown": mdd,
        "calmar": 0.0 if mdd == 0 else float(annual / mdd),
        "win_rate": float((live > 0).mean()) if len(live) else 0.0,
        "profit_factor": float(gains / losses) if losses > 0 else (math.inf if gains > 0 else 0.0),
        "trades": int((turn > 0).sum()),
        "turnover": float(turn.sum() * bars_per_year / n),
        "exposure": float(np.abs(pos).mean()),
        "final_equity": 1 + total,
        "bars": n,
    }


# ---- statistical confidence in a Sharpe ratio ----
# Per-bar (not annualised) Sharpe ratios inside the formulas; arguments and results in the annualised
# units every report uses. Skewness and kurtosis are the plain moment estimates (kurtosis not excess).

EULER_GAMMA = 0.5772156649015329


def _moments(r: np.ndarray) -> tuple[float, float, float]:
    """Per-bar Sharpe (ddof 1, as :func:`sharpe_ratio`), skewness and (non-excess) kurtosis."""
    sd = r.std(ddof=1)
    c = r - r.mean()
    m2 = float(np.mean(c**2))
    if sd == 0 or m2 == 0:
        return 0.0, 0.0, 3.0
    return float(r.mean() / sd), float(np.mean(c**3) / m2**1.5), float(np.mean(c**4) / m2**2)


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sharpe: float, bars_per_year: float) -> float:
    """P(true Sharpe > ``benchmark_sharpe``) given the observed returns (Bailey & López de Prado, 2012).

    PSR = Φ((SR − SR*)·√(n − 1) / √(1 − γ₃·SR + (γ₄ − 1)/4·SR²)), SR per bar, γ₃ skewness, γ₄ kurtosis:
    the Sharpe estimate's standard error under non-normal returns. ``benchmark_sharpe`` is annualised.
    """
    from scipy.stats import norm

    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    if n < 3:
        raise ValueError(f"the probabilistic Sharpe ratio needs at least 3 returns, got {n}")
    sr, skew, kurt = _moments(r)
    if r.std() == 0:  # constant returns: Sharpe 0 by convention (see sharpe_ratio), known exactly
        return float(benchmark_sharpe < 0)
    bench = benchmark_sharpe / math.sqrt(bars_per_year)
    var = max(1 - skew * sr + (kurt - 1) / 4 * sr**2, 1e-12)  # tiny only for pathological samples
    return float(norm.cdf((sr - bench) * math.sqrt(n - 1) / math.sqrt(var)))


def expected_max_sharpe(trial_sharpes: np.ndarray, bars_per_year: float) -> float:
    """Sharpe the best of N unskilled trials reaches by luck (annualised), for the deflated Sharpe ratio.

    E[max SR] ≈ √V·((1 − γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e))), V the variance of the trials' Sharpe
    estimates and γ Euler's constant (Bailey & López de Prado, 2014). 0 for a single trial.
    """
    from scipy.stats import norm

    s = np.asarray(trial_sharpes, dtype=np.float64) / math.sqrt(bars_per_year)
    n = len(s)
    if n < 2:
        return 0.0
    z = (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n) + EULER_GAMMA * norm.ppf(1 - 1 / (n * math.e))
    return float(s.std(ddof=1) * z * math.sqrt(bars_per_year))


def deflated_sharpe_ratio(returns: np.ndarray, trial_sharpes: np.ndarray, bars_per_year: float) -> float:
    """PSR of the selected trial's ``returns`` against the Sharpe the best of ``trial_sharpes`` reaches by luck."""
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(trial_sharpes, bars_per_year), bars_per_year)


def block_bootstrap_indices(n: int, samples: int, block: int, seed: int) -> np.ndarray:
    """(samples, n) indices of a circular block bootstrap (Politis & Romano, 1992).

    Blocks of consecutive bars keep the short-range dependence (volatility clustering) of returns that an
    i.i.d. bootstrap (e.g. ``scipy.stats.bootstrap``) would destroy and so understate the spread.
    """
    rng = np.random.default_rng(seed)
    k = -(-n // block)
    starts = rng.integers(0, n, size=(samples, k, 1))
    return ((starts + np.arange(block)) % n).reshape(samples, k * block)[:, :n]


def _sharpe_rows(r: np.ndarray, bars_per_year: float) -> np.ndarray:
    sd = r.std(axis=1, ddof=1)
    return np.where(sd > 0, r.mean(axis=1) / np.where(sd > 0, sd, 1) * math.sqrt(bars_per_year), 0.0)


def bootstrap_sharpe(
    returns: np.ndarray,
    bars_per_year: float,
    benchmark: np.ndarray | None = None,
    samples: int = 2000,
    level: float = 0.95,
    block: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile confidence interval of the annualised Sharpe by circular block bootstrap.

    With ``benchmark`` (returns over the same bars), the same resampled bars give the interval of the
    Sharpe *difference* (returns minus benchmark's Sharpe) too, and the share of resamples where the
    returns' Sharpe is higher. ``block`` defaults to round(n^(1/3)).
    """
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    if n < 3:
        raise ValueError(f"the bootstrap needs at least 3 returns, got {n}")
    block = block or max(1, round(n ** (1 / 3)))
    idx = block_bootstrap_indices(n, samples, block, seed)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    s = _sharpe_rows(r[idx], bars_per_year)
    out = {"low": float(np.quantile(s, lo_q)), "high": float(np.quantile(s, hi_q)), "block": block}
    if benchmark is not None:
        b = np.asarray(benchmark, dtype=np.float64)
        if b.shape != r.shape:
            raise ValueError(f"benchmark has {b.shape} returns, returns have {r.shape}")
        d = s - _sharpe_rows(b[idx], bars_per_year)
        out.update(
            diff_low=float(np.quantile(d, lo_q)), diff_high=float(np.quantile(d, hi_q)), p_better=float(np.mean(d > 0))
        )
    return out
