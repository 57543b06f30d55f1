"""The pooled book of a universe and its verdict, against hand-computed figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.evaluation.universe import on_dates, pooled_book, pooled_results, pooled_verdict
from src.evaluation.walk import COLUMNS, EvalResult


def _ledger(net, position, dates=("2024-01-02", "2024-01-03", "2024-01-04"), price=(10.0, 11.0, 12.0)):
    net = np.asarray(net, dtype=float)
    df = pd.DataFrame({k: np.zeros(len(net)) for k in COLUMNS}, index=pd.DatetimeIndex(dates, tz="UTC"))
    df["net_return"], df["position"], df["equity"] = net, position, np.cumprod(1 + net)
    df["price"], df["cost"] = price, np.abs(position) * 1e-4
    return df


def test_the_pooled_book_holds_a_kth_of_the_capital_in_each_ticker_never_rebalanced():
    a = _ledger([0.10, -0.05, 0.02], [1.0, 0.5, -1.0])
    b = _ledger([0.00, 0.10, -0.10], [0.0, 1.0, 1.0], price=(50.0, 50.0, 25.0))
    book = pooled_book([a, b])
    # equity: a 1.1, 1.045, 1.0659; b 1.0, 1.1, 0.99; the book holds half of each from the start
    np.testing.assert_allclose(book["equity"], [1.05, 1.0725, 1.02795], rtol=1e-12)
    np.testing.assert_allclose(book["net_return"], [0.05, 1.0725 / 1.05 - 1, 1.02795 / 1.0725 - 1], rtol=1e-12)
    # weights at each bar's start: (1/2, 1/2), (1.1, 1.0) / 2.1, (1.045, 1.1) / 2.145
    np.testing.assert_allclose(book["position"], [0.5, 0.5 * 1.1 / 2.1 + 1.0 / 2.1, (-1.045 + 1.1) / 2.145])
    np.testing.assert_allclose(book["price"], [1.0, (1.1 + 1.0) / 2, (1.2 + 0.5) / 2])
    assert list(book.columns) == list(COLUMNS)


def test_a_date_one_ticker_lacks_is_skipped_and_its_growth_counted_on_the_next():
    a = _ledger([0.10, -0.05, 0.02], [1.0, 0.5, -1.0])
    b = _ledger([0.00, -0.10], [0.0, 1.0], dates=("2024-01-02", "2024-01-04"), price=(50.0, 45.0))
    book = pooled_book([a, b])
    assert len(book) == 2
    np.testing.assert_allclose(book["equity"], [1.05, (1.1 * 0.95 * 1.02 + 0.9) / 2], rtol=1e-12)


def test_the_verdict_compounds_a_date_another_ticker_lacks_into_the_next():
    """The returns the verdict tests are the book's: a's 01-03 and 01-04 returns become one, none dropped."""
    a = _ledger([0.10, -0.05, 0.02], [1.0, 0.5, -1.0])
    a["risk_free"] = [0.001, 0.002, 0.003]
    dates = pd.DatetimeIndex(["2024-01-02", "2024-01-04"], tz="UTC")
    got = on_dates(a, dates)
    np.testing.assert_allclose(got["net_return"], [0.10, 0.95 * 1.02 - 1], rtol=1e-12)
    np.testing.assert_allclose(got["risk_free"], [0.001, 1.002 * 1.003 - 1], rtol=1e-12)


def test_pooled_results_and_verdict_cover_every_policy_and_ticker():
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2024-01-02", periods=60, tz="UTC")
    per = {}
    for t in ("x", "y", "z"):
        market = rng.normal(0.0005, 0.01, 60)
        agent = _ledger(market * 0.5 + rng.normal(0, 0.005, 60), np.full(60, 0.5), dates, np.full(60, 10.0))
        hold = _ledger(market, np.ones(60), dates, np.full(60, 10.0))
        per[t] = {"agent": EvalResult("test", agent, {}), "buy_and_hold": EvalResult("test", hold, {})}
    pooled = pooled_results(per, 252)
    assert set(pooled) == {"agent", "buy_and_hold"} and pooled["agent"].split == "test"
    assert pooled["buy_and_hold"].metrics["exposure"] == pytest.approx(1.0)
    v = pooled_verdict(per, 252)
    assert v["tickers"] == 3 and v["dates"] == 60 and v["ci_low"] <= v["diff"] <= v["ci_high"]
