"""What holding and trading cost, and what holding earns: ``env.costs`` and the per-bar income series.

Trading costs are charged on every trade, in basis points of traded notional. Financing accrues on the
weight held overnight (at the open-fill default, the weight held into each bar; with ``fill=close``, the
weight bought at the close), over the calendar time to the next bar (ACT/365, so a weekend counts three
days), at annual rates in basis points:

- ``cash_rate_bps``: cash earns it. Cash is 1 − w of equity: short-sale proceeds earn it too (an
  institutional short rebate). It is also the risk-free rate of every Sharpe ratio (excess returns).
- ``borrow_bps``: the fee for borrowing the shares of a short, on the short's market value |w| (w < 0).
- ``margin_rate_bps``: paid on borrowed cash, w − 1 of equity, when the weight exceeds 1 (leverage).

Dividends come from the CSV's ``dividend`` column (cash per share, on the ex-date's row), when it has one:
the weight held at the close before the ex-date receives D / close (longs are paid, shorts pay). Files
without the column pay none: on a dividend payer whose prices are not dividend-adjusted (the shipped
SPY, QQQ, AAPL, ...), long positions and buy-and-hold are then understated by the yield, and the report
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.core.checks import number

TRADING = ("commission_bps", "spread_bps", "slippage_bps")
FINANCING = ("cash_rate_bps", "borrow_bps", "margin_rate_bps")
YEAR_DAYS = 365.0  # ACT/365


@dataclass
class Costs:
    """Trading costs (bps of traded notional) and financing rates (bps a year); see the module docstring."""

    commission_bps: float = 0.0
    spread_bps: float = 0.0  # full quoted spread; half of it is paid per trade
    slippage_bps: float = 0.0
    cash_rate_bps: float = 0.0
    borrow_bps: float = 0.0
    margin_rate_bps: float = 0.0

    def __post_init__(self) -> None:
        for k in (*TRADING, *FINANCING):  # cash may earn a negative rate (EUR and CHF deposits, 2015-21)
            setattr(self, k, number(getattr(self, k), f"env.costs.{k}", low=None if k == "cash_rate_bps" else 0.0))

    @property
    def rate(self) -> float:
        """Trading cost per unit of turnover (fraction of equity traded)."""
        return (self.commission_bps + self.spread_bps / 2 + self.slippage_bps) / 1e4

    @property
    def cash_rate(self) -> float:
        return self.cash_rate_bps / 1e4

    @property
    def borrow_rate(self) -> float:
        return self.borrow_bps / 1e4

    @property
    def margin_rate(self) -> float:
        return self.margin_rate_bps / 1e4

    @property
    def finances(self) -> bool:
        """Whether any financing rate is non-zero."""
        return any(getattr(self, k) != 0 for k in FINANCING)


def financing(weight: np.ndarray, years: np.ndarray, costs: Costs) -> np.ndarray:
    """Interest and fees over ``years`` on ``weight`` (fractions of equity): the reference form of the env's
    in-torch accounting, ``years · (cash·(1 − w)⁺ − margin·(w − 1)⁺ − borrow·(−w)⁺)``."""
    w = np.asarray(weight, dtype=np.float64)
    return np.asarray(years) * (
        costs.cash_rate * np.maximum(1 - w, 0) - costs.margin_rate * np.maximum(w - 1, 0)
        - costs.borrow_rate * np.maximum(-w, 0)
    )  # fmt: skip


def accrual_years(index: pd.DatetimeIndex) -> np.ndarray:
    """(T,) calendar years from each bar to the previous one (ACT/365); bar 0 gets the median interval."""
    ts = (index.tz_convert(None) if index.tz is not None else index).to_numpy()
    seconds = np.diff(ts).astype("timedelta64[ns]").astype(np.float64) / 1e9  # any datetime resolution
    gaps = seconds / (86400.0 * YEAR_DAYS)
    first = float(np.median(gaps)) if len(gaps) else 0.0
    return np.concatenate([[first], gaps])


def dividend_yields(bars: pd.DataFrame) -> np.ndarray:
    """(T,) dividend per share on each bar's row divided by the previous close (0 on bar 0 and without one)."""
    if "dividend" not in bars:
        return np.zeros(len(bars))
    d = bars["dividend"].to_numpy(dtype=np.float64)
    c = bars["close"].to_numpy(dtype=np.float64)
    out = np.zeros(len(bars))
    out[1:] = d[1:] / c[:-1]
    return out


def describe(costs: Costs, dividends: str) -> dict:
    """What ``run_info.json`` and the report state about costs, financing and income."""
    return {
        **{k: getattr(costs, k) for k in (*TRADING, *FINANCING)},
        "cost_per_unit_traded": costs.rate,
        "dividends": dividends,
    }
