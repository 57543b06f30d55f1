"""One training env across a universe of single-asset markets: every env carries its ticker.

The tickers' series (normalised features, the returns before and after the fill, dividends, accrual) are laid
end to end into one (sum of bars, ...) table; a bar's global index is its ticker's offset plus its own index, so
the observation gather, the accounting and the auto-reset are :class:`src.envs.market_env.MarketEnv`'s, with no
loop over tickers. What differs per env is read from its ticker each step: the end of the ticker's training
split (an episode never runs into the next ticker's bars) and the ticker's costs and financing. A window never
straddles two tickers: a ticker's first decision bar has a full window of its own rows before it.

Training starts are drawn ``uniform`` over tickers (then uniformly within the ticker) or by ``bars`` (uniformly
over every ticker's start bars, so a long history is drawn more often).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from src.core.errors import ConfigError
from src.data.market import Market
from src.data.universe import Universe
from src.envs.accounting import Scalars
from src.envs.market_env import MarketEnv

WEIGHTS = ("uniform", "bars")
PER_TICKER = ("rate", "min_trade", "cash", "borrow", "margin")  # the rest of Scalars are constants


@dataclass
class UniverseMarket(Market):
    """The tickers' series end to end; it describes itself as its universe (tickers, split dates, each market)."""

    summary: dict = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        return self.summary

    def norm_state(self) -> None:
        return None  # every ticker has its own statistics: src.predict takes one-asset agents


def concatenated(universe: Universe) -> UniverseMarket:
    """The tickers' series end to end, as one market whose training split spans them all (the env keeps each
    ticker's own range); its costs are the first ticker's (the env reads every ticker's own)."""
    ms = universe.markets
    first = ms[0]
    for m in ms[1:]:
        for key in ("window", "fill", "episode_length", "min_trade", "min_equity", "position_limits"):
            if getattr(m, key) != getattr(first, key):
                raise ConfigError(f"universe: env.{key} differs between {first.name} and {m.name}")
    cat = {k: torch.cat([getattr(m, k) for m in ms]) for k in ("features", "pre", "post", "dividend", "accrual")}
    total = len(cat["pre"])
    return UniverseMarket(
        name=f"universe of {len(ms)}", source="universe", data_hash="+".join(m.data_hash for m in ms),
        bars=first.bars.iloc[:0], splits={"train": (0, total), "val": (total, total), "test": (total, total)},
        window=first.window, costs=first.costs, fill=first.fill, bars_per_year=first.bars_per_year,
        episode_length=first.episode_length, min_trade=first.min_trade, min_equity=first.min_equity,
        norm_mean=first.norm_mean, norm_std=first.norm_std, position_limits=first.position_limits,
        feature_names=first.feature_names, bars_per_day=first.bars_per_day, summary=universe.describe(), **cat,
    )  # fmt: skip


class UniverseEnv(MarketEnv):
    """N training episodes across the universe's tickers (see the module docstring).

    Args:
        universe: the tickers, already on the target device.
        num_envs: N.
        generator: draws tickers and start bars.
        weights: ``uniform`` (each ticker as often) or ``bars`` (by its number of training start bars).
        episode_length, group_size, compile: as :class:`MarketEnv`.
        market: the universe's :func:`concatenated` series, if already built (not built twice).
    """

    def __init__(
        self,
        universe: Universe,
        num_envs: int,
        generator: torch.Generator,
        weights: str = "uniform",
        episode_length: int | None = None,
        group_size: int = 1,
        compile: bool = False,
        market: Market | None = None,
    ) -> None:
        if weights not in WEIGHTS:
            raise ConfigError(f"env.weights must be one of {WEIGHTS}, got {weights!r}")
        market = concatenated(universe) if market is None else market  # the module's, when it has built one
        dev = market.device
        sizes = torch.tensor([len(m.pre) for m in universe.markets], device=dev)
        self.offsets = torch.cumsum(sizes, 0) - sizes  # each ticker's first global bar
        ranges = [m.decision_range("train") for m in universe.markets]
        self.lo = self.offsets + torch.tensor([a for a, _ in ranges], device=dev)  # first decision bar (global)
        self.hi = self.offsets + torch.tensor([b for _, b in ranges], device=dev)  # last decision bar (global)
        self.weights = weights
        self.k_by_ticker = [Scalars.make(m.costs.rate, m.min_trade, dev, m.costs, m.fill == "close")
                            for m in universe.markets]  # fmt: skip
        super().__init__(market, "train", num_envs, True, generator, episode_length=episode_length,
                         group_size=group_size, compile=compile)  # fmt: skip
        self._rates = self.k_by_ticker[0]._replace(
            **{f: torch.stack([getattr(k, f) for k in self.k_by_ticker]) for f in PER_TICKER}
        )
        if any(m.has_income for m in universe.markets):
            self._carry = (market.dividend, market.accrual)
        self._per_ticker()

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if getattr(self, "_k", None) is not None and float(value) != self._rate:
            raise ConfigError("a universe's costs are per ticker: a curriculum cannot scale them (curriculum=none)")
        self._rate = float(value)
        self._k = None

    def _per_ticker(self) -> None:
        """The ticker of every env from its bar; its costs and the end of its training bars."""
        self.ticker = torch.bucketize(self.t, self.offsets, right=True) - 1
        k0, per = self.k_by_ticker[0], PER_TICKER
        self._k = k0._replace(**{f: getattr(self._rates, f)[self.ticker] for f in per})
        self._stop = self.hi[self.ticker] + 1

    def _starts(self, k: int) -> torch.Tensor:
        g = self.group_size if k == self.n else 1
        lo, hi = self.lo, torch.maximum(self.lo, self.hi - self.max_len + 1)  # prefer full-length episodes
        count = hi - lo + 1
        if self.weights == "uniform":
            tick = torch.randint(0, len(lo), (k // g,), generator=self.gen, device=lo.device)
            u = torch.rand(k // g, generator=self.gen, device=lo.device)
            starts = lo[tick] + (u * count[tick]).long().clamp(max=count[tick] - 1)
        else:
            ends = torch.cumsum(count, 0)
            pick = torch.randint(0, int(ends[-1]), (k // g,), generator=self.gen, device=lo.device)
            tick = torch.bucketize(pick, ends, right=True)
            starts = lo[tick] + pick - (ends[tick] - count[tick])
        return starts.repeat_interleave(g) if g > 1 else starts

    def reset(self):
        obs = super().reset()
        self._per_ticker()
        return obs

    def step(self, action: torch.Tensor):
        out = super().step(action)
        self._per_ticker()  # restarted envs may be on another ticker now
        return out

    def regime_order(self) -> torch.Tensor:
        raise ConfigError("a universe has no single calm-to-volatile order of start bars (curriculum=none)")

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self._per_ticker()
