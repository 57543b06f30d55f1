"""The pooled test across a universe's tickers: reduces to the one-ticker test, and is calibrated when the
tickers move together (where a t-test over tickers taken as independent is not)."""

from __future__ import annotations

import numpy as np
import pytest

from src.evaluation.calibration import panel_paths, panel_rates
from src.evaluation.panel import panel_sharpe_difference_test
from src.evaluation.stats import sharpe_difference_test


def test_one_ticker_or_k_copies_of_it_is_the_one_ticker_test():
    a, b = panel_paths(1, k=3, n=300, edge=0.5, seed=3)
    one = sharpe_difference_test(a[0, :, 0], b[0, :, 0], 252)
    assert panel_sharpe_difference_test(a[0, :, :1], b[0, :, :1], 252) == pytest.approx(one, rel=1e-12)
    copies = panel_sharpe_difference_test(np.repeat(a[0, :, :1], 4, 1), np.repeat(b[0, :, :1], 4, 1), 252)
    assert copies == pytest.approx(one, rel=1e-9)  # four copies of one ticker carry one ticker's information


def test_the_mean_difference_is_the_mean_of_the_tickers_differences():
    a, b = panel_paths(1, k=4, n=300, seed=4)
    pooled = panel_sharpe_difference_test(a[0], b[0], 252)
    each = [sharpe_difference_test(a[0, :, j], b[0, :, j], 252)["diff"] for j in range(4)]
    assert pooled["diff"] == pytest.approx(np.mean(each), rel=1e-12)
    assert pooled["se"] < np.mean([sharpe_difference_test(a[0, :, j], b[0, :, j], 252)["se"] for j in range(4)])


def test_the_pooled_test_is_calibrated_on_correlated_tickers():
    """Nine tickers sharing a market factor (correlation 0.6), fat tails and GARCH volatility, no edge: the pooled
    test rejects at about 5% (experiments/statistics_calibration/results.md) and its interval covers 0; a t-test on the
    nine differences as if they were independent rejects about 30% of the time."""
    r = panel_rates(300, seed=7)
    assert 0.015 <= r["reject"] <= 0.09 and r["cover"] >= 0.9
    assert r["naive_t"] >= 0.15
    assert panel_rates(100, edge=1.5, seed=8)["reject"] >= 0.6  # and it has power against a real edge


def test_a_panel_with_missing_returns_is_refused():
    a, b = panel_paths(1, k=2, n=50, seed=1)
    a[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="missing returns"):
        panel_sharpe_difference_test(a[0], b[0], 252)
