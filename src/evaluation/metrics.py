"""Performance metrics: the one place every reported figure is computed.

Inputs are per-bar series from an evaluation: simple net returns ``r_t``
(after costs, financing and dividends), the weight held during the bar, the
turnover traded at its fill and the cash rate's return over the bar ``rf_t``
(``env.costs.cash_rate_bps``; 0 unless set). Conventions (stated once, here):

- annualisation by the market's bars per year ``B``;
- Sharpe = mean(x) / std(x, ddof=1) * sqrt(B) of the excess returns x = r - rf; 0 when std is 0;
- Sortino = mean(x) / sqrt(mean(min(x, 0)^2)) * sqrt(B); 0 when there is no downside;
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


def excess_returns(returns: np.ndarray, risk_free: np.ndarray | None = None) -> np.ndarray:
    """Returns in excess of the cash rate (float64): what every Sharpe ratio and statistical test reads."""
    r = np.asarray(returns, dtype=np.float64)
    return r if risk_free is None else r - np.asarray(risk_free, dtype=np.float64)


def sharpe_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    """Annualised Sharpe ratio of (excess) returns; 0 for fewer than 2 bars or no variation."""
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2:
        return 0.0
    sd = r.std(ddof=1)
    return 0.0 if sd == 0 else float(r.mean() / sd * math.sqrt(bars_per_year))


def compute_metrics(
    returns: np.ndarray,
    positions: np.ndarray,
    turnover: np.ndarray,
    bars_per_year: float,
    risk_free: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one equity path; see the module docstring for each definition."""
    r = np.asarray(returns, dtype=np.float64)
    x = excess_returns(r, risk_free)
    pos = np.asarray(positions, dtype=np.float64)
    turn = np.asarray(turnover, dtype=np.float64)
    n = len(r)
    if n == 0:
        raise ValueError("compute_metrics needs at least one bar")
    total = float(np.prod(1 + r) - 1)
    annual = (1 + total) ** (bars_per_year / n) - 1 if total > -1 else -1.0
    downside = math.sqrt(float(np.mean(np.minimum(x, 0) ** 2)))
    mdd = max_drawdown(r)
    live = r[np.abs(pos) > 0]
    gains, losses = live[live > 0].sum(), -live[live < 0].sum()
    return {
        "total_return": total,
        "annual_return": float(annual),
        "annual_volatility": float(r.std(ddof=1) * math.sqrt(bars_per_year)) if n > 1 else 0.0,
        "sharpe": sharpe_ratio(x, bars_per_year),
        "sortino": 0.0 if downside == 0 else float(x.mean() / downside * math.sqrt(bars_per_year)),
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
