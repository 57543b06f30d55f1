"""A market: validated bars, causal normalised features, chronological splits and costs.

Indexing convention (used by the env and every report): a decision is taken
on the data of bar ``t`` and its profit or loss is realised on bar ``t + 1``.
A split ``[start, end)`` is the set of bars whose returns it *realises*, so
its first decision is taken at bar ``start - 1`` (look-back into the previous
split is allowed; it is the past) and its last at ``end - 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.core.errors import ConfigError, DataError
from src.data.costs import Costs, accrual_years, dividend_yields
from src.data.costs import describe as describe_costs
from src.data.features import FEATURE_NAMES, compute_features, warmup_bars
from src.data.loader import file_sha256, load_ohlcv, resolve_path

__all__ = ["Costs", "Market", "build_market", "infer_calendar", "load_market"]
MAX_WEIGHT = 10.0  # |position limit| above this is taken for a typo (10x leverage)
FILLS = ("open", "close")
SPLITS = ("train", "val", "test")
NORM_CLIP = 10.0  # a fixed constant, so clipping looks at no data


TRADING_DAY = 0.5  # a weekday trades when it carries at least half as many bars as the busiest weekday
STRAY = 0.005  # a weekday with fewer bars than this share of all (a one-off session) is ignored


def trading_weekdays(ts: pd.DatetimeIndex) -> tuple[int, bool]:
    """How many weekdays carry a regular share of the bars, and whether any carries an irregular one.

    A weekday trades when it has at least half as many bars as the busiest weekday; one with fewer (but more
    than a stray session, 0.5% of the bars) is irregular: a Sunday-evening FX open, a market half a week long.
    """
    shares = np.bincount(np.asarray(ts.day_of_week), minlength=7) / len(ts)
    trading = shares >= TRADING_DAY * shares.max()
    irregular = bool(((shares > STRAY) & ~trading).any())
    return int(trading.sum()), irregular


def infer_calendar(ts: pd.DatetimeIndex, source: str = "data", need_bars_per_year: bool = True) -> tuple[float, int]:
    """Bars per year and bars per trading day, from timestamps *as written* (local wall-clock time).

    The trading days a year come from the weekdays that carry bars in the data's own local calendar: five
    weekdays give 252 (a weekday market: Monday-Friday, or Sunday-Thursday), seven give 365 (a 7-day market);
    anything else (six days, or a weekday with an irregular share of the bars, such as an FX file's
    Sunday-evening opens) is ambiguous and refused, asking for ``env.bars_per_year``. (In UTC an intraday
    session straddling midnight, Sydney's 10:00-16:00 at +11:00, splits across two dates and puts bars on
    Sundays.) Daily bars give 252 or 365; intraday bars the median number of bars per local date
    times the days: 26 x 252 = 6552 for 15-minute regular-session stock bars, 24 x 365 = 8760 for hourly 24/7
    crypto; weekly or coarser, calendar time.
    """
    if len(ts) < 3:
        raise DataError(f"{source}: too few bars to infer the bar size")
    step = pd.Series(ts).diff().median()
    per_day = int(max(pd.Series(1, index=ts).groupby(ts.normalize()).size().median(), 1))
    if step >= pd.Timedelta(days=5):
        return 365.25 / (step / pd.Timedelta(days=1)), 1  # weekly or coarser: calendar based
    weekdays, irregular = trading_weekdays(ts)
    if weekdays in (5, 7) and not irregular:
        days = 252.0 if weekdays == 5 else 365.0
    elif need_bars_per_year:
        raise DataError(
            f"{source}: cannot infer bars per year: the bars fall on {weekdays} weekdays"
            f"{' and irregularly on another' if irregular else ''} in the file's own local time (a weekday market "
            "trades on 5, a 7-day market on 7); set env.bars_per_year"
        )
    else:
        days = 252.0  # not used: env.bars_per_year is given
    if step >= pd.Timedelta(hours=20):
        return days, 1
    return float(per_day * days), per_day


def infer_bars_per_year(ts: pd.DatetimeIndex) -> float:
    """Bars per year of timestamps as written (see :func:`infer_calendar`)."""
    return infer_calendar(ts)[0]


def local_time(bars: pd.DataFrame) -> pd.DatetimeIndex:
    """The bars' timestamps as written in the file: the UTC index moved by each row's ``utc_offset``."""
    ts = bars.index.tz_convert(None) if bars.index.tz is not None else bars.index
    if "utc_offset" not in bars:
        return ts
    return ts + pd.to_timedelta(bars["utc_offset"].to_numpy(), unit="min")


@dataclass
class Market:
    """Everything the env and the reports need about one data set, on one device."""

    name: str
    source: str
    data_hash: str
    bars: pd.DataFrame  # validated OHLCV after the feature warm-up, UTC index
    features: torch.Tensor  # (T, F) normalised with train statistics
    pre: torch.Tensor  # (T,) return earned by the held position before the fill on bar t
    post: torch.Tensor  # (T,) return earned by the new position after the fill on bar t
    splits: dict[str, tuple[int, int]]
    window: int
    costs: Costs
    fill: str
    bars_per_year: float
    episode_length: int
    min_trade: float
    min_equity: float
    norm_mean: np.ndarray = field(repr=False)
    norm_std: np.ndarray = field(repr=False)
    position_limits: tuple[float, float] = (-1.0, 1.0)
    leak_next_return: bool = False
    feature_names: tuple[str, ...] = FEATURE_NAMES
    bars_per_day: int = 1  # trading-day length in bars (the bootstrap's shortest block)
    dividend: torch.Tensor | None = None  # (T,) dividend yield paid on bar t to the weight held overnight into it
    accrual: torch.Tensor | None = None  # (T,) calendar years from bar t - 1 to bar t (financing accrues over them)
    oracle: np.ndarray | None = None  # (T,) a planted market's oracle weight decided at bar t (src/data/planted.py)

    def __post_init__(self) -> None:
        n = len(self.pre)
        if self.dividend is None:
            self.dividend = torch.zeros(n, dtype=self.pre.dtype, device=self.pre.device)
        if self.accrual is None:  # one bar is a 1 / bars_per_year of a year
            self.accrual = torch.full((n,), 1.0 / self.bars_per_year, dtype=self.pre.dtype, device=self.pre.device)

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def has_income(self) -> bool:
        """Whether holding earns or pays anything (a financing rate, or a dividend in the file)."""
        return self.costs.finances or bool((self.dividend != 0).any())

    def to(self, device: torch.device | str) -> Market:
        """Move the tensors to ``device`` (in place) and return self."""
        names = ("features", "pre", "post", "dividend", "accrual")
        for k in names:
            setattr(self, k, getattr(self, k).to(device))
        return self

    def dividends(self) -> str:
        """One line on the dividends this market pays."""
        if "dividend" not in self.bars:
            return (
                "none: the data has no dividend column (prices not dividend-adjusted understate a dividend "
                "payer's long positions and buy-and-hold by its yield, and flatter flat and short ones)"
            )
        paid = int((self.dividend != 0).sum())
        return f"from the file's dividend column: {paid} payment{'s' * (paid != 1)}, to longs and charged to shorts"

    def norm_state(self) -> dict | None:
        """What new bars need to be observed as training observed them (src.predict): the training split's
        feature statistics, the window, the bar size and the file they came from (plain lists: weights-only safe)."""
        return {"mean": [float(x) for x in self.norm_mean], "std": [float(x) for x in self.norm_std],
                "features": list(self.feature_names), "window": int(self.window),
                "bars_per_year": float(self.bars_per_year), "source": str(self.source),
                "bar_seconds": float(pd.Series(self.bars.index).diff().median().total_seconds()),
                "sha256": self.data_hash}  # fmt: skip

    def decision_range(self, split: str) -> tuple[int, int]:
        """First and last bar (inclusive) on which a decision of ``split`` is taken."""
        start, end = self.splits[split]
        return max(start - 1, self.window - 1), end - 2

    def describe(self) -> dict:
        ts = self.bars.index
        out = {
            "name": self.name,
            "source": self.source,
            "sha256": self.data_hash,
            "bars": len(ts),
            "bars_per_year": self.bars_per_year,
            "bars_per_day": self.bars_per_day,
            "cost_rate": self.costs.rate,
            "costs": describe_costs(self.costs, self.dividends()),
            "fill": self.fill,
            "position_limits": list(self.position_limits),
        }
        if self.leak_next_return:
            out["LEAK"] = "leak_next_return=true: observations contain the next bar's return (leakage canary)"
        if "gaps" in self.bars.attrs:
            out["intervals_over_1.5_bars"] = self.bars.attrs["gaps"]
            out["largest_gap"] = self.bars.attrs["largest_gap"]
        for s, (a, b) in self.splits.items():
            out[s] = {"first": str(ts[a]), "last": str(ts[b - 1]), "bars": b - a}
        return out


def build_market(
    bars: pd.DataFrame,
    *,
    name: str,
    source: str,
    data_hash: str,
    window: int = 30,
    costs: dict | Costs | None = None,
    fill: str = "open",
    split: dict | None = None,
    bars_per_year: float | None = None,
    episode_length: int = 256,
    min_trade: float = 0.0,
    min_equity: float = 0.05,
    position_limits: tuple[float, float] | list[float] = (-1.0, 1.0),
    leak_next_return: bool = False,
) -> Market:
    """Compute features, split chronologically and normalise with train statistics only.

    ``leak_next_return`` is a deliberate look-ahead for the leakage tests only (the
    canary that proves the learner can exploit a leak): feature 0 of bar ``t`` is
    replaced by the return that bar ``t + 1`` pays the new position. Never use it
    for results; the run's data description and report flag it.
    """
    if window <= 0:
        raise ConfigError(f"env.window must be > 0, got {window}")
    if fill not in FILLS:
        raise ConfigError(f"env.fill must be one of {FILLS}, got {fill!r}")
    if episode_length <= 0:
        raise ConfigError(f"env.episode_length must be > 0, got {episode_length}")
    if not 0 <= min_trade < 1:
        raise ConfigError(f"env.min_trade must be in [0, 1), got {min_trade}")
    if not 0 <= min_equity < 1:
        raise ConfigError(f"env.min_equity must be in [0, 1), got {min_equity}")
    try:
        lo, hi = (float(x) for x in position_limits)
    except (TypeError, ValueError):
        raise ConfigError(f"env.position_limits must be [min, max], got {position_limits!r}") from None
    if not -MAX_WEIGHT <= lo <= 0.0 <= hi <= MAX_WEIGHT or lo == hi:
        raise ConfigError(
            f"env.position_limits must satisfy -{MAX_WEIGHT:g} <= min <= 0 <= max <= {MAX_WEIGHT:g} with min < max "
            f"(weights of equity; flat must be allowed; above 1, leverage at env.costs.margin_rate_bps), "
            f"got [{lo}, {hi}]"
        )
    costs = costs if isinstance(costs, Costs) else Costs(**(costs or {}))
    split = dict(split or {"train": 0.7, "val": 0.15})
    if bars_per_year is not None and not (isinstance(bars_per_year, int | float) and bars_per_year > 0):
        raise ConfigError(f"env.bars_per_year must be a number > 0 (or null: inferred), got {bars_per_year!r}")
    inferred, per_day = infer_calendar(local_time(bars), source, need_bars_per_year=bars_per_year is None)
    feats = compute_features(bars).iloc[warmup_bars() :]
    bars = bars.iloc[warmup_bars() :]
    n = len(bars)
    n_train, n_val, n_test = _split_sizes(split, n, source)
    need = window + 2
    if n_train < need + 1 or min(n_val, n_test) < 2:
        raise DataError(
            f"{source}: {n + warmup_bars()} rows are too few: after the {warmup_bars()}-bar feature warm-up the "
            f"train/val/test splits get {n_train}/{n_val}/{n_test} bars; train needs > {need} "
            f"(window {window} + 2) and val/test at least 2 each"
        )
    splits = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n_train + n_val + n_test),
    }

    x = feats.to_numpy(np.float64)
    mean = x[:n_train].mean(axis=0)
    std = x[:n_train].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    z = np.clip((x - mean) / std, -NORM_CLIP, NORM_CLIP)

    pre, post, dividend, accrual = bar_series(bars, fill)
    if leak_next_return:
        future = np.append(post[1:], 0.0)
        z[:, 0] = np.clip(future / (future[:n_train].std() + 1e-12), -NORM_CLIP, NORM_CLIP)

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    return Market(
        name=name,
        source=source,
        data_hash=data_hash,
        bars=bars,
        features=f32(z),
        pre=f32(pre),
        post=f32(post),
        dividend=f32(dividend),
        accrual=f32(accrual),
        splits=splits,
        window=window,
        costs=costs,
        fill=fill,
        bars_per_year=float(bars_per_year or inferred),
        bars_per_day=per_day,
        episode_length=episode_length,
        min_trade=min_trade,
        min_equity=min_equity,
        norm_mean=mean,
        norm_std=std,
        position_limits=(lo, hi),
        leak_next_return=bool(leak_next_return),
    )


def bar_series(bars: pd.DataFrame, fill: str) -> tuple[np.ndarray, ...]:
    """``(pre, post, dividend, accrual)`` of every bar: the return before and after the fill, the dividend yield
    paid to the weight held into the bar, and the calendar years since the previous bar (what the env accounts
    with; src.paper computes them here too, so a paper account and a backtest cannot differ)."""
    n = len(bars)
    o, c = bars["open"].to_numpy(), bars["close"].to_numpy()
    pre, post = np.zeros(n), np.zeros(n)
    if fill == "open":
        pre[1:] = o[1:] / c[:-1] - 1  # overnight gap, earned by the position held before the fill
        post[1:] = c[1:] / o[1:] - 1  # open to close, earned by the new position
    else:  # filled at the close of the decision bar: optimistic (no delay)
        post[1:] = c[1:] / c[:-1] - 1
    return pre, post, dividend_yields(bars), accrual_years(bars.index)


def _split_sizes(split: dict, n: int, source: str) -> tuple[int, int, int]:
    """Bars in train / val / test: fractions (``train``, ``val``; test the rest) or explicit counts
    (``train_bars``, ``val_bars``, ``test_bars``, counted after the feature warm-up; bars after the
    test split are then unused: walk-forward folds end where their test period ends)."""
    counts = ("train_bars", "val_bars", "test_bars")
    if any(k in split for k in counts):
        if set(split) != set(counts):
            raise ConfigError(f"env.split: give all of {counts} (and no fractions), got {sorted(split)}")
        n_train, n_val, n_test = (int(split[k]) for k in counts)
        if min(n_train, n_val, n_test) <= 0 or n_train + n_val + n_test > n:
            raise ConfigError(
                f"env.split: {n_train}/{n_val}/{n_test} train/val/test bars do not fit the {n} bars of {source} "
                f"after the {warmup_bars()}-bar warm-up (each must be > 0)"
            )
        return n_train, n_val, n_test
    tr, va = float(split.get("train", 0.7)), float(split.get("val", 0.15))
    if not (tr > 0 and va > 0 and tr + va < 1):
        raise ConfigError(f"env.split must have train > 0, val > 0, train + val < 1, got {split}")
    n_train, n_val = int(n * tr), int(n * va)
    return n_train, n_val, n - n_train - n_val


def load_market(
    path: str, name: str | None = None, max_gap: str | None = None, max_file_mb: float = 1024.0, **kwargs
) -> Market:
    """Load a CSV and build its :class:`Market`; ``kwargs`` go to :func:`build_market`."""
    if path in (None, "", "???"):
        raise ConfigError("env.path is required: pass env.path=<file.csv>")
    if max_gap is not None:
        try:
            pd.Timedelta(max_gap)
        except ValueError:
            raise ConfigError(f"env.max_gap must be a duration like 10D or 6h, got {max_gap!r}") from None
    p = resolve_path(path)
    bars = load_ohlcv(p, max_gap=max_gap, max_file_mb=max_file_mb)
    return build_market(bars, name=name or Path(path).stem, source=str(path), data_hash=file_sha256(p), **kwargs)
