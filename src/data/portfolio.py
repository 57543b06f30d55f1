"""A portfolio's data: K assets on one calendar, as (bar, asset, ...) tensors for :mod:`src.envs.portfolio_env`.

The assets are loaded as a :class:`src.data.universe.Universe` (one calendar split for all, each asset's causal
features normalised with its own training bars, its own costs), then cut to the period every asset covers: from
the latest first bar (after its feature warm-up) to the last date every asset has. Inside that period the assets
must trade on the same dates; a date one asset has and another lacks is refused, naming both (an aligned table
that papered over it would pay one asset two bars' returns in one).

Costs: each asset's trading cost rate and its short-borrow fee are its own; cash is one account, so the cash
rate and the margin rate must be the same for every asset (a difference is refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from src.core.errors import ConfigError, DataError
from src.data.universe import Universe, load_universe

MODES = ("long_only", "long_short")


@dataclass
class PortfolioMarket:
    """Every asset's series on one calendar; row t of each tensor is the bar at ``dates[t]``."""

    name: str
    tickers: list[str]
    dates: pd.DatetimeIndex
    close: np.ndarray  # (T, K) closing prices (the ledger's per-asset prices)
    features: torch.Tensor  # (T, K, F) each asset normalised with its own training bars
    pre: torch.Tensor  # (T, K) return from the previous close to the open (earned by the weights held into bar t)
    post: torch.Tensor  # (T, K) return from the open to the close (earned by the weights after the fill)
    dividend: torch.Tensor  # (T, K) dividend yields paid on bar t to the weights held overnight into it
    accrual: torch.Tensor  # (T,) calendar years from bar t - 1 to bar t
    rate: torch.Tensor  # (K,) trading cost per unit of turnover
    borrow: torch.Tensor  # (K,) annual fee on a short's market value
    cash_rate: float  # annual: what cash earns (the risk-free rate of every Sharpe ratio)
    margin_rate: float  # annual: interest on borrowed cash
    splits: dict[str, tuple[int, int]]
    window: int
    bars_per_year: float
    bars_per_day: int
    episode_length: int
    min_trade: float
    min_equity: float
    mode: str  # long_only (weights >= 0, sum <= 1) or long_short (sum of |weights| <= gross)
    gross: float
    data_hash: str
    universe: Universe = field(repr=False)
    oracle: None = None  # no planted oracle (what src.train asks of every market)
    fill: str = "open"

    @property
    def num_assets(self) -> int:
        return len(self.tickers)

    @property
    def num_features(self) -> int:
        return self.features.shape[2]

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def position_limits(self) -> tuple[float, float]:
        """The bounds of one asset's weight (the sum is bounded too: see ``mode``)."""
        return (0.0, 1.0) if self.mode == "long_only" else (-self.gross, self.gross)

    @property
    def action_dim(self) -> int:
        """The policy's simplex: K assets + cash (long-only), or K long + K short legs + cash."""
        return self.num_assets + 1 if self.mode == "long_only" else 2 * self.num_assets + 1

    def to(self, device: torch.device | str) -> PortfolioMarket:
        for k in ("features", "pre", "post", "dividend", "accrual", "rate", "borrow"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def decision_range(self, split: str) -> tuple[int, int]:
        """First and last bar (inclusive) on which a decision of ``split`` is taken."""
        start, end = self.splits[split]
        return max(start - 1, self.window - 1), end - 2

    def describe(self) -> dict:
        out = {
            "name": self.name,
            "tickers": self.tickers,
            "sha256": self.data_hash,
            "bars": len(self.dates),
            "bars_per_year": self.bars_per_year,
            "mode": self.mode,
            "gross": self.gross,
            "fill": self.fill,
            "cost_rate": {t: float(r) for t, r in zip(self.tickers, self.rate.tolist(), strict=True)},
            "cash_rate": self.cash_rate,
            "margin_rate": self.margin_rate,
            "markets": {m.name: m.describe() for m in self.universe.markets},
        }
        for s, (a, b) in self.splits.items():
            out[s] = {"first": str(self.dates[a]), "last": str(self.dates[b - 1]), "bars": b - a}
        return out


def align(universe: Universe) -> tuple[pd.DatetimeIndex, list[np.ndarray]]:
    """The dates every asset covers and, per asset, the row of each of them; a date missing from one asset is
    refused."""
    ms = universe.markets
    first = max(m.bars.index[0] for m in ms)
    last = universe.last
    own = [m.bars.index[(m.bars.index >= first) & (m.bars.index <= last)] for m in ms]
    dates = own[0]
    for m, ix in zip(ms[1:], own[1:], strict=True):
        if not ix.equals(dates):
            extra = ix.difference(dates)
            missing = dates.difference(ix)
            d, who, lacks = (missing[0], ms[0].name, m.name) if len(missing) else (extra[0], m.name, ms[0].name)
            raise DataError(
                f"portfolio: {who} has a bar on {d} that {lacks} lacks; the assets must trade on the same dates "
                f"between {first.date()} and {last.date()} (one calendar)"
            )
    return dates, [m.bars.index.get_indexer(dates) for m in ms]


def load_portfolio(
    paths: list[str], mode: str = "long_only", gross: float = 1.0, name: str = "portfolio", **kwargs
) -> PortfolioMarket:
    """Load ``paths`` as a universe (``kwargs``: :func:`src.data.universe.load_universe`'s) and lay the assets
    side by side on their common dates; ``mode`` ``long_only`` or ``long_short`` with ``gross`` the largest sum
    of absolute weights."""
    if mode not in MODES:
        raise ConfigError(f"env.mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(gross, int | float) and 0 < gross <= 4):
        raise ConfigError(f"env.gross must be in (0, 4] (sum of |weights|, fractions of equity), got {gross!r}")
    if mode == "long_only" and gross != 1:
        raise ConfigError(f"env.gross={gross} applies to mode=long_short; long_only is bounded by the simplex")
    if kwargs.get("fill", "open") != "open":
        raise ConfigError("env=portfolio fills at the next open only (env.fill=open)")
    if len(paths) < 2:
        raise ConfigError(f"env.paths: a portfolio needs at least 2 assets, got {len(paths)}")
    kwargs.setdefault("weights", "uniform")
    universe = load_universe(paths, name=name, **kwargs)
    ms = universe.markets
    for key in ("cash_rate", "margin_rate"):
        rates = {m.name: getattr(m.costs, key) for m in ms}
        if len(set(rates.values())) > 1:
            raise ConfigError(f"portfolio: env.costs.{key}_bps differs across assets {rates}; cash is one account")
    dates, rows = align(universe)
    ts = universe.val_start, universe.test_start
    n_train, n_val = int((dates < ts[0]).sum()), int(((dates >= ts[0]) & (dates < ts[1])).sum())
    n = len(dates)
    window = ms[0].window
    if n_train < window + 3 or n_val < 2 or n - n_train - n_val < 2:
        raise DataError(f"portfolio: the common period has {n_train}/{n_val}/{n - n_train - n_val} train/val/test "
                        f"bars; train needs > window + 2 ({window + 2}), val and test at least 2")  # fmt: skip

    def stack(key: str) -> torch.Tensor:
        return torch.stack([getattr(m, key)[torch.as_tensor(r)] for m, r in zip(ms, rows, strict=True)], dim=1)

    pre = stack("pre")
    pre[0] = 0.0  # the first common bar starts the table: nothing is held into it
    dividend = stack("dividend")
    dividend[0] = 0.0
    accrual = ms[0].accrual[torch.as_tensor(rows[0])].clone()
    return PortfolioMarket(
        name=name, tickers=universe.names, dates=dates,
        close=np.stack([m.bars["close"].to_numpy()[r] for m, r in zip(ms, rows, strict=True)], axis=1),
        features=stack("features"), pre=pre, post=stack("post"), dividend=dividend, accrual=accrual,
        rate=torch.tensor([m.costs.rate for m in ms]), borrow=torch.tensor([m.costs.borrow_rate for m in ms]),
        cash_rate=ms[0].costs.cash_rate, margin_rate=ms[0].costs.margin_rate,
        splits={"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)},
        window=window, bars_per_year=ms[0].bars_per_year, bars_per_day=ms[0].bars_per_day,
        episode_length=ms[0].episode_length, min_trade=ms[0].min_trade, min_equity=ms[0].min_equity,
        mode=mode, gross=float(gross), data_hash="+".join(m.data_hash for m in ms), universe=universe,
    )  # fmt: skip
