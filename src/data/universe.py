"""A universe: several single-asset markets on one calendar split, for one policy trained across them.

Every ticker is loaded and validated as a :class:`src.data.market.Market` of its own (its causal features, its
costs) and normalised with **its own training bars only**. The split is one calendar for all: validation and
test start on the same dates for every ticker, so no ticker's test period precedes another's training data
(which a per-ticker 70/15/15 split would allow: a file starting in 2016 would test in 2025, one starting in 1993
in 2021). The fractions ``env.split.train`` and ``env.split.val`` cut the period that *every* ticker covers
(after each one's feature warm-up); a ticker's bars before that period all train, and bars after the last date
every ticker has are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.core.errors import ConfigError, DataError
from src.data.features import warmup_bars
from src.data.loader import file_sha256, load_ohlcv, resolve_path
from src.data.market import Market, build_market

__all__ = ["Universe", "common_calendar", "load_universe", "shared_split_dates", "ticker_name"]


@dataclass
class Universe:
    """The tickers' markets (same order as ``names``) and the dates where validation and test start."""

    markets: list[Market]
    val_start: pd.Timestamp
    test_start: pd.Timestamp
    last: pd.Timestamp  # the last date every ticker has: the end of every test period
    weights: str = "uniform"  # how training episodes are drawn across tickers (src/envs/universe_env.py)
    dates: pd.DatetimeIndex | None = None  # the period every ticker covers (what walk-forward folds count)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.markets]

    @property
    def bars_per_year(self) -> float:
        return self.markets[0].bars_per_year  # one bar size for all (load_universe checks)

    @property
    def bars_per_day(self) -> int:
        return self.markets[0].bars_per_day

    def describe(self) -> dict:
        return {
            "tickers": self.names,
            "sha256": "+".join(m.data_hash for m in self.markets),  # every file, in order (what a resume checks)
            "val_start": str(self.val_start),
            "test_start": str(self.test_start),
            "last": str(self.last),
            **self._periods(),
            "markets": {m.name: m.describe() for m in self.markets},
        }

    def _periods(self) -> dict:
        """The splits on the common calendar (first and last date, dates): as a single market describes them."""
        if self.dates is None:
            return {}
        d = self.dates
        cut = {"train": d < self.val_start, "val": (d >= self.val_start) & (d < self.test_start),
               "test": (d >= self.test_start) & (d <= self.last)}  # fmt: skip
        return {k: {"first": str(d[m][0]), "last": str(d[m][-1]), "bars": int(m.sum())} for k, m in cut.items()}


def ticker_name(path: str) -> str:
    """``data/tsla_daily.csv`` -> ``tsla``: the file name up to its first underscore."""
    return Path(path).stem.split("_", 1)[0].lower()


def common_calendar(calendars: dict[str, pd.DatetimeIndex]) -> pd.DatetimeIndex:
    """The dates of the period every calendar covers (the union of the tickers' dates within it)."""
    first_name = max(calendars, key=lambda k: calendars[k][0])
    last_name = min(calendars, key=lambda k: calendars[k][-1])
    first, last = calendars[first_name][0], calendars[last_name][-1]
    if first >= last:
        raise DataError(
            f"universe: no period that every ticker covers: {first_name} starts on {first.date()} after "
            f"{last_name} ends on {last.date()}"
        )
    return pd.DatetimeIndex(sorted(set().union(*(c[(c >= first) & (c <= last)] for c in calendars.values()))))


def shared_split_dates(
    calendars: dict[str, pd.DatetimeIndex], train: float | None = None, val: float | None = None,
    counts: dict | None = None,
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:  # fmt: skip
    """Where validation and test start, and the last date, on the period every calendar covers.

    The dates of that period (:func:`common_calendar`) are counted as one market's bars are: ``int(n x train)``
    train, ``int(n x val)`` validation, the rest test; or, with ``counts`` (``train_bars``, ``val_bars``,
    ``test_bars``, as walk-forward folds give them), that many of its dates each, the dates after the test unused.
    """
    dates = common_calendar(calendars)
    if counts is not None:
        i_val = int(counts["train_bars"])
        i_test = i_val + int(counts["val_bars"])
        end = i_test + int(counts["test_bars"])
        if not (0 < i_val < i_test < end <= len(dates)):
            raise ConfigError(f"env.split: {counts} do not fit the {len(dates)} dates every ticker covers "
                              f"({dates[0].date()}..{dates[-1].date()}; each count must be > 0)")  # fmt: skip
        return dates[i_val], dates[i_test], dates[end - 1]
    if not (train > 0 and val > 0 and train + val < 1):
        raise ConfigError(f"env.split must have train > 0, val > 0, train + val < 1, got train={train}, val={val}")
    i_val = int(len(dates) * train)
    i_test = i_val + int(len(dates) * val)  # as a single market's split counts its bars
    if not 0 < i_val < i_test < len(dates):
        raise DataError(f"universe: the common period {dates[0].date()}..{dates[-1].date()} is too short to split")
    return dates[i_val], dates[i_test], dates[-1]


def load_universe(
    paths: list[str],
    costs: dict | None = None,
    ticker_costs: dict | None = None,
    split: dict | None = None,
    max_gap: str | None = None,
    max_file_mb: float = 1024.0,
    weights: str = "uniform",
    name: str = "universe",
    **kwargs,
) -> Universe:
    """Load every CSV of ``paths`` (names from the file names: ``tsla_daily.csv`` is ``tsla``) on one calendar
    split; ``costs`` apply to every ticker, ``ticker_costs[<name>]`` overrides keys for one; ``kwargs`` go to
    :func:`src.data.market.build_market` (window, fill, episode length, limits, ...); ``weights`` is how the
    training env draws tickers (``uniform`` or ``bars``); ``name`` labels the run."""
    if not paths:
        raise ConfigError("env.paths is empty: give the universe's CSV files")
    if weights not in ("uniform", "bars"):
        raise ConfigError(f"env.weights must be uniform or bars, got {weights!r}")
    names = [ticker_name(p) for p in paths]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"env.paths: two files are ticker {dup!r} (names come from the file name before '_')")
    unknown = sorted(set(ticker_costs or {}) - set(names))
    if unknown:
        raise ConfigError(f"env.ticker_costs: {unknown[0]!r} is not a ticker of env.paths ({', '.join(names)}); "
                          f"remove it with ~env.ticker_costs.{unknown[0]} (or all with ~env.ticker_costs)")  # fmt: skip
    split = dict(split or {"train": 0.7, "val": 0.15})
    counts = ("train_bars", "val_bars", "test_bars")
    if set(split) != {"train", "val"} and set(split) != set(counts):
        raise ConfigError(f"env.split of a universe takes the fractions train and val, or the counts {counts} "
                          f"(dates of the period every ticker covers), got {sorted(split)}")  # fmt: skip
    bars = {
        n: load_ohlcv(resolve_path(p), max_gap=max_gap, max_file_mb=max_file_mb)
        for n, p in zip(names, paths, strict=True)
    }
    calendars = {n: b.index[warmup_bars() :] for n, b in bars.items()}
    if "train_bars" in split:
        val_start, test_start, last = shared_split_dates(calendars, counts=split)
    else:
        val_start, test_start, last = shared_split_dates(calendars, float(split["train"]), float(split["val"]))
    markets = []
    for n, p in zip(names, paths, strict=True):
        ts = calendars[n]
        counts = {
            "train_bars": int((ts < val_start).sum()),
            "val_bars": int(((ts >= val_start) & (ts < test_start)).sum()),
            "test_bars": int(((ts >= test_start) & (ts <= last)).sum()),
        }
        own = {**(costs or {}), **((ticker_costs or {}).get(n) or {})}
        try:
            markets.append(build_market(bars[n], name=n, source=str(p), data_hash=file_sha256(resolve_path(p)),
                                        costs=own, split=counts, **kwargs))  # fmt: skip
        except (DataError, ConfigError) as e:
            raise type(e)(f"universe, ticker {n}: {e}") from None
    sizes = {m.name: m.bars_per_year for m in markets}
    if len(set(sizes.values())) > 1:
        raise DataError(f"universe: the tickers' bar sizes differ (bars per year {sizes}); use one bar size")
    return Universe(markets, val_start, test_start, last, weights, common_calendar(calendars))
