"""Universes: one calendar split for every ticker, each normalised with its own training bars only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.core.errors import ConfigError, DataError
from src.data import load_market
from src.data.features import compute_features, warmup_bars
from src.data.universe import load_universe, shared_split_dates
from tests.helpers import write_ticker_csv


@pytest.fixture
def files(tmp_path):
    """Three tickers of different histories: a long one, a late starter, one that ends early."""
    return [
        write_ticker_csv(tmp_path / "old_daily.csv", 1500, 1, "2000-01-03"),
        write_ticker_csv(tmp_path / "new_daily.csv", 700, 2, "2002-06-03"),
        write_ticker_csv(tmp_path / "short_daily.csv", 1000, 3, "2001-01-01"),
    ]


def test_every_ticker_validates_and_tests_on_the_same_dates(files):
    """No test date of one ticker precedes a training date of another: training ends before the common
    validation start, validation before the common test start, for every ticker; bars after the last date all
    tickers have are unused."""
    u = load_universe(files, window=10)
    assert u.names == ["old", "new", "short"]
    last_train = max(m.bars.index[m.splits["train"][1] - 1] for m in u.markets)
    first_test = min(m.bars.index[m.splits["test"][0]] for m in u.markets)
    assert last_train < u.val_start <= first_test
    for m in u.markets:
        ts = m.bars.index
        (a, b), (c, d), (e, f) = (m.splits[s] for s in ("train", "val", "test"))
        assert a == 0 and b == c and d == e  # contiguous, from the first bar after the warm-up
        assert ts[b - 1] < u.val_start <= ts[c] and ts[d - 1] < u.test_start <= ts[e] and ts[f - 1] <= u.last
    short = u.markets[2]
    assert short.bars.index[short.splits["test"][1] - 1] == u.last  # the shortest file ends every test period
    old = u.markets[0]
    assert old.splits["test"][1] < len(old.bars)  # the long file's later bars are not used
    # the common period starts where the late starter's warm-up ends; the cut is 70/15 of its dates
    first = u.markets[1].bars.index[0]
    common = pd.DatetimeIndex(sorted({t for m in u.markets for t in m.bars.index if first <= t <= u.last}))
    n = len(common)
    assert u.val_start == common[int(0.7 * n)] and u.test_start == common[int(0.7 * n) + int(0.15 * n)]


def test_each_ticker_is_normalised_with_its_own_training_bars_only(files, tmp_path):
    """A ticker's normalisation statistics are its own training rows' mean and std; changing another ticker's
    file, or this ticker's bars after its training split, leaves them as they were."""
    u = load_universe(files, window=10)
    for m, path in zip(u.markets, files, strict=True):
        feats = compute_features(pd.read_csv(path, index_col=0, parse_dates=True)).iloc[warmup_bars() :]
        train = feats.to_numpy(np.float64)[: m.splits["train"][1]]
        np.testing.assert_allclose(m.norm_mean, train.mean(axis=0), rtol=1e-9, atol=1e-12)
    other = write_ticker_csv(tmp_path / "other_daily.csv", 700, 9, "2002-06-03")  # another "new" path, other prices
    changed = load_universe([files[0], other, files[2]], window=10)
    np.testing.assert_array_equal(changed.markets[0].norm_mean, u.markets[0].norm_mean)
    np.testing.assert_array_equal(changed.markets[2].norm_std, u.markets[2].norm_std)
    df = pd.read_csv(files[0], index_col=0)
    cut = u.markets[0].splits["train"][1] + warmup_bars()  # the first row after old's training split
    df.iloc[cut:, :4] *= 3.0  # its later prices change (validation and test)
    later = tmp_path / "old_daily.csv"
    later.write_text(df.to_csv())
    again = load_universe([str(later), *files[1:]], window=10)
    np.testing.assert_array_equal(again.markets[0].norm_mean, u.markets[0].norm_mean)
    assert not np.array_equal(again.markets[0].features.numpy(), u.markets[0].features.numpy())


def test_a_universe_of_one_ticker_is_the_single_asset_market(files):
    one = load_universe(files[:1], window=10).markets[0]
    single = load_market(files[0], window=10)
    assert one.splits == single.splits
    for name in ("features", "pre", "post", "accrual"):
        assert np.array_equal(getattr(one, name).numpy(), getattr(single, name).numpy()), name


def test_bad_universes_are_refused_in_one_line(files, tmp_path):
    with pytest.raises(ConfigError, match="two files are ticker 'old'"):
        load_universe([files[0], files[0]])
    with pytest.raises(ConfigError, match="ticker_costs: 'xyz' is not a ticker"):
        load_universe(files, ticker_costs={"xyz": {"spread_bps": 1}})
    late = write_ticker_csv(tmp_path / "late_daily.csv", 300, 4, "2010-01-04")
    with pytest.raises(DataError, match="no period that every ticker covers"):
        load_universe([files[0], late])
    with pytest.raises(ConfigError, match="env.split must have"):
        shared_split_dates({"a": pd.DatetimeIndex(["2000-01-03", "2000-01-04"])}, 0.9, 0.2)


def test_split_counts_cut_the_common_calendar():
    """Walk-forward folds give counts: that many dates of the common period each, the dates after the test unused."""
    cal = {"a": pd.bdate_range("2000-01-03", periods=30), "b": pd.bdate_range("2000-01-10", periods=40)}
    common = pd.bdate_range("2000-01-10", "2000-02-11")  # b's first date to a's last
    got = shared_split_dates(cal, counts={"train_bars": 10, "val_bars": 5, "test_bars": 4})
    assert got == (common[10], common[15], common[18])
    with pytest.raises(ConfigError, match="do not fit"):
        shared_split_dates(cal, counts={"train_bars": 10, "val_bars": 5, "test_bars": 20})


def test_per_ticker_costs_override_the_shared_ones(files):
    u = load_universe(files, window=10, costs={"spread_bps": 2.0}, ticker_costs={"new": {"spread_bps": 10.0}})
    assert [m.costs.spread_bps for m in u.markets] == [2.0, 10.0, 2.0]
