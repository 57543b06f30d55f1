"""Statistical confidence in a Sharpe ratio: PSR, deflated Sharpe, block bootstrap, by hand and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.metrics import (
    block_bootstrap_indices,
    bootstrap_sharpe,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_ratio,
)

R = np.array([0.10, -0.05, 0.02, 0.0])


def test_psr_hand_computed():
    # mean .0175, sd(ddof 1) .0623833 -> SR .280524 per bar; central moments m2 .00291875,
    # m3 6.215625e-5, m4 1.67945703e-5 -> skew .394175, kurtosis 1.971402.
    # 1 - .394175 * .280524 + .971402 / 4 * .280524^2 = .908535; z = .280524 * sqrt(3) / sqrt(.908535) = .509755
    assert probabilistic_sharpe_ratio(R, 0.0, 1) == pytest.approx(0.694888, abs=2e-6)  # Φ(.509755)
    # annualised inputs: benchmark 1.0 a year at 252 bars is .0629941 per bar -> z = .395287
    assert probabilistic_sharpe_ratio(R, 1.0, 252) == pytest.approx(0.653683, abs=2e-6)
    # the bars_per_year scaling cancels when the benchmark is 0
    assert probabilistic_sharpe_ratio(R, 0.0, 252) == pytest.approx(probabilistic_sharpe_ratio(R, 0.0, 1))


def test_psr_degenerate_and_errors():
    flat = np.zeros(10)
    assert probabilistic_sharpe_ratio(flat, 0.0, 252) == 0.0  # exactly 0 is not > 0
    assert probabilistic_sharpe_ratio(flat, -0.5, 252) == 1.0
    with pytest.raises(ValueError, match="at least 3"):
        probabilistic_sharpe_ratio(R[:2], 0.0, 252)


def test_psr_is_calibrated_on_normal_returns():
    # with true Sharpe 0, PSR(0) is uniform: it exceeds .95 in about 5% of samples
    rng = np.random.default_rng(1)
    psr = np.array([probabilistic_sharpe_ratio(rng.normal(0, 0.01, 500), 0.0, 252) for _ in range(2000)])
    assert 0.035 < (psr > 0.95).mean() < 0.065
    assert 0.45 < psr.mean() < 0.55


def test_expected_max_sharpe_matches_the_published_figure():
    # Bailey, Borwein, López de Prado & Zhu (2014): 1,000 unit-variance trials reach E[max] ~ 3.26 by luck
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, 1000)
    s = (s - s.mean()) / s.std(ddof=1)  # variance exactly 1
    assert expected_max_sharpe(s, 1) == pytest.approx(3.2551, abs=1e-3)
    # two trials, Sharpes -1 and 1 (sd sqrt 2): sqrt(2) * (0.4228 * Φ⁻¹(.5) + .5772 * Φ⁻¹(1 - 1/(2e)))
    assert expected_max_sharpe(np.array([-1.0, 1.0]), 1) == pytest.approx(math.sqrt(2) * 0.5772157 * 0.9004526)
    assert expected_max_sharpe(np.array([0.8]), 252) == 0.0  # nothing selected, nothing to deflate


def test_expected_max_sharpe_against_simulation():
    # the max of N normal Sharpe estimates with sd sigma: simulation agrees with the closed form within 3%
    rng = np.random.default_rng(2)
    n, sigma = 50, 0.4
    sims = rng.normal(0, sigma, (20000, n)).max(axis=1).mean()
    trials = rng.normal(0, sigma, 100000)[:n]
    trials = (trials - trials.mean()) / trials.std(ddof=1) * sigma
    assert expected_max_sharpe(trials, 1) == pytest.approx(sims, rel=0.03)


def test_deflation_lowers_confidence_as_trials_grow():
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.01, 500)
    psr0 = probabilistic_sharpe_ratio(r, 0.0, 252)
    assert deflated_sharpe_ratio(r, np.array([1.0]), 252) == psr0
    few, many = rng.normal(0, 0.5, 5), rng.normal(0, 0.5, 200)
    assert deflated_sharpe_ratio(r, many, 252) < deflated_sharpe_ratio(r, few, 252) < psr0


def test_block_bootstrap_indices_are_circular_blocks():
    idx = block_bootstrap_indices(10, 50, 3, seed=0)
    assert idx.shape == (50, 10) and idx.min() >= 0 and idx.max() <= 9
    for row in idx:
        for k in range(0, 9, 3):
            blk = row[k : min(k + 3, 10)]
            assert np.array_equal(blk, (blk[0] + np.arange(len(blk))) % 10)
    assert np.array_equal(idx, block_bootstrap_indices(10, 50, 3, seed=0))  # seeded


def test_bootstrap_interval_covers_the_true_sharpe():
    # i.i.d. normal returns with annualised Sharpe 1: the 90% interval covers it in ~90% of samples
    rng = np.random.default_rng(4)
    mu, sd, n = 0.01 / math.sqrt(252), 0.01, 504
    hits = []
    for i in range(150):
        ci = bootstrap_sharpe(rng.normal(mu, sd, n), 252, samples=400, level=0.90, seed=i)
        hits.append(ci["low"] <= 1.0 <= ci["high"])
    assert 0.8 < np.mean(hits) < 0.97


def test_bootstrap_difference_against_a_benchmark():
    rng = np.random.default_rng(5)
    b = rng.normal(0.0003, 0.01, 500)
    same = bootstrap_sharpe(b, 252, benchmark=b)
    assert same["diff_low"] == same["diff_high"] == 0.0 and same["p_better"] == 0.0
    better = bootstrap_sharpe(b + 0.002, 252, benchmark=b)  # same risk, 0.2% more a bar
    assert better["diff_low"] > 0 and better["p_better"] == 1.0
    assert better["low"] < sharpe_ratio(b + 0.002, 252) < better["high"]
    with pytest.raises(ValueError, match="benchmark"):
        bootstrap_sharpe(b, 252, benchmark=b[:-1])


def _results(agent: np.ndarray, bh: np.ndarray) -> dict:
    import pandas as pd

    from src.evaluation import EvalResult
    from src.metrics import compute_metrics

    idx = pd.date_range("2024-01-02", periods=len(agent), freq="B")

    def one(r):
        led = pd.DataFrame({"net_return": r, "position": 1.0, "turnover": 0.0}, index=idx)
        return EvalResult("test", led, compute_metrics(r, np.ones(len(r)), np.zeros(len(r)), 252))

    return {"agent": one(agent), "buy_and_hold": one(bh)}


def test_verdict_requires_both_tests_and_says_so():
    from src.verdict import verdict

    rng = np.random.default_rng(6)
    bh = rng.normal(0.0004, 0.01, 500)
    strong = verdict({"val": _results(bh + 0.002, bh), "test": _results(bh + 0.002, bh)}, 252, [0.1, 0.3, 2.0])
    assert strong["beat_buy_and_hold"] and "BEAT buy-and-hold with 95% confidence" in strong["sentence"]
    assert strong["val"]["selected_from"] == 3 and 0 < strong["val"]["deflated_sharpe_ratio"] <= 1
    # a small edge: a higher Sharpe on the sample, but nowhere near significant
    weak = verdict({"test": _results(bh + 0.0002, bh)}, 252)
    assert weak["test"]["sharpe"] > weak["test"]["buy_and_hold_sharpe"]
    assert not weak["beat_buy_and_hold"] and "did NOT beat" in weak["sentence"]
    assert weak["test"]["psr_vs_buy_and_hold"] < 0.95
