"""Statistical inference on Sharpe ratios (src/evaluation/stats.py): by hand, and calibrated by simulation under a null.

The simulations print their measured rates (``pytest -s``); the README's "What the numbers mean" quotes them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.evaluation.calibration import (
    PAIR_KINDS,
    annual_sharpes,
    binomial_interval,
    null_checks,
    paired_rates,
    selection_rates,
)
from src.evaluation.metrics import sharpe_ratio
from src.evaluation.stats import (
    block_bootstrap_indices,
    block_length,
    bootstrap_sharpe,
    deflated_sharpe_ratio,
    expected_max,
    probabilistic_sharpe_ratio,
    selection_benchmark,
    sharpe_difference_test,
)

R = np.array([0.10, -0.05, 0.02, 0.0])
N_TEST = 604  # the TSLA test period's length


def test_psr_hand_computed():
    # mean .0175, sd(ddof 1) .0623833 -> SR .280524 per bar; central moments m2 .00291875,
    # m3 6.215625e-5, m4 1.67945703e-5 -> skew .394175, kurtosis 1.971402.
    # 1 - .394175 * .280524 + .971402 / 4 * .280524^2 = .908535; z = .280524 * sqrt(3) / sqrt(.908535) = .509755
    assert probabilistic_sharpe_ratio(R, 0.0, 1) == pytest.approx(0.694888, abs=2e-6)  # Φ(.509755)
    # annualised inputs: benchmark 1.0 a year at 252 bars is .0629941 per bar -> z = .395287
    assert probabilistic_sharpe_ratio(R, 1.0, 252) == pytest.approx(0.653683, abs=2e-6)
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


# ---- selection: expected maximum, effective trials, deflated Sharpe ratio ----


def test_expected_max_matches_the_published_figure_and_simulation():
    # Bailey, Borwein, López de Prado & Zhu (2014): 1,000 unit-variance trials reach E[max] ~ 3.26 by luck
    assert expected_max(1000) == pytest.approx(3.2551, abs=1e-3)
    # two trials: .4228 * Φ⁻¹(.5) + .5772 * Φ⁻¹(1 - 1/(2e)) = .5772157 * .9004526
    assert expected_max(2) == pytest.approx(0.5772157 * 0.9004526)
    assert expected_max(1) == 0.0
    sims = np.random.default_rng(2).normal(size=(20000, 50)).max(axis=1).mean()
    assert expected_max(50) == pytest.approx(sims, rel=0.03)


def test_selection_benchmark_hand_computed():
    # one run's checks: N = the number of checks, V their variance
    one = selection_benchmark([0.2, 0.6, 1.0], 252)
    assert one["trials"] == 1 and one["checks"] == 3 and one["effective_trials"] == 3
    assert one["sharpe_std"] == pytest.approx(0.4)  # sd(.2, .6, 1.0) = .4
    assert one["expected_max_sharpe"] == pytest.approx(0.4 * expected_max(3))
    # two trials: all checks pooled (mean .5, squared deviations .04 0 .04 .01 0 .01: V = .10 / 5 = .02)
    a, b = [0.3, 0.5, 0.7], [0.4, 0.5, 0.6]
    pooled = np.array(a + b)
    v = pooled.var(ddof=1)  # .02
    assert v == pytest.approx(0.02)
    # within-trial variances .04 and .01 -> rho 1 - .04 / .02 < 0 (clipped to 0) and 1 - .01 / .02 = .5
    n_eff = (0 + 1 * 3) + (0.5 + 0.5 * 3)
    two = selection_benchmark([a, b], 252)
    assert two["trials"] == 2 and two["checks"] == 6
    assert two["effective_trials"] == pytest.approx(n_eff)  # 3 + 2 = 5
    assert two["expected_max_sharpe"] == pytest.approx(math.sqrt(v) * expected_max(n_eff))
    # checks that all agree count as one trial each
    same = selection_benchmark([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]], 252)
    assert same["effective_trials"] == pytest.approx(2.0)
    assert selection_benchmark([0.8], 252)["expected_max_sharpe"] == 0.0  # nothing selected


def test_deflation_lowers_confidence_as_candidates_grow():
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.01, 500)
    psr0 = probabilistic_sharpe_ratio(r, 0.0, 252)
    assert deflated_sharpe_ratio(r, [1.0], 252) == psr0
    few, many = rng.normal(0, 0.5, 5), rng.normal(0, 0.5, 200)
    assert deflated_sharpe_ratio(r, many, 252) < deflated_sharpe_ratio(r, few, 252) < psr0


@pytest.mark.parametrize(
    ("trials", "checks", "phi", "decisive"),
    [(1, 20, 0.8, False), (6, 10, 0.3, False), (20, 5, 0.5, False), (10, 20, 0.97, True), (5, 40, 0.98, True)],
)
def test_selection_benchmark_is_the_expected_maximum_under_the_null(trials, checks, phi, decisive):
    # the DSR's benchmark must estimate what the best unskilled candidate reaches: simulate it. Where a trial's
    # checks are nearly copies of each other (decisive), counting every check overshoots and counting trials
    # (the old rule: the trials' best values, N = trials) undershoots; the effective trials do neither.
    rng = np.random.default_rng(10)
    best, bench, naive, old = [], [], [], []
    for _ in range(200):
        s = annual_sharpes(null_checks(rng, trials, checks, phi))
        best.append(s.max())
        bench.append(selection_benchmark(list(s) if trials > 1 else list(s[0]), 252)["expected_max_sharpe"])
        naive.append(s.std(ddof=1) * expected_max(s.size))
        old.append(s.max(axis=1).std(ddof=1) * expected_max(trials) if trials > 1 else 0.0)
    ratio, ratio_naive, ratio_old = (np.mean(x) / np.mean(best) for x in (bench, naive, old))
    print(f"\n{trials} x {checks}, phi {phi}: benchmark / E[max] = {ratio:.3f} (every check {ratio_naive:.3f}, "
          f"old {ratio_old:.3f})")  # fmt: skip
    assert 0.85 < ratio < 1.15
    if decisive:
        assert ratio_naive > 1.15 and ratio_old < 0.85


def test_deflated_sharpe_ratio_null_rejection_rates():
    """Unskilled runs and sweeps: how often is DSR >= .95, with the old rules and with the new?

    Old per-run rule: the checks up to the selected one (what a loaded best.ckpt remembered). Old sweep rule:
    the trials' best values with N = trials. New: every check, and effective trials across trials.
    """
    run = selection_rates(1, 20, 0.3, sims=400, seed=11)
    sweep = selection_rates(6, 10, 0.3, sims=400, seed=12)
    print(f"\nP(DSR >= .95 | no skill): run {run}, sweep {sweep}")
    assert sweep["old"] > 0.2  # the reviewer's 38%: the old rule rejects far above 5%
    # at or below nominal: DSR >= .95 is conservative by construction (it is not a calibrated test)
    assert run["new"] <= 0.05 and sweep["new"] <= 0.05


# ---- the paired test against buy-and-hold ----


def test_paired_test_hand_computed_and_against_memmel():
    rng = np.random.default_rng(20)
    a, b = rng.normal(0.001, 0.01, 5000), rng.normal(0.0005, 0.012, 5000)
    b = 0.6 * a + 0.8 * b  # correlated streams
    res = sharpe_difference_test(a, b, 1.0)
    # the statistic itself: SR_a - SR_b (ddof 1, per bar with bars_per_year 1)
    assert res["diff"] == pytest.approx(sharpe_ratio(a, 1) - sharpe_ratio(b, 1))
    # i.i.d. normal data: the delta method's variance tends to Memmel's (2003) correction of Jobson & Korkie:
    # Var = (2 - 2ρ + (SRa² + SRb² - 2 SRa SRb ρ²) / 2) / T
    sa, sb, rho = sharpe_ratio(a, 1), sharpe_ratio(b, 1), np.corrcoef(a, b)[0, 1]
    memmel = math.sqrt((2 - 2 * rho + 0.5 * (sa**2 + sb**2 - 2 * sa * sb * rho**2)) / len(a))
    assert res["se"] == pytest.approx(memmel, rel=0.1)
    assert res["ci_low"] == pytest.approx(res["diff"] - 1.959964 * res["se"])
    assert res["p_value"] == pytest.approx(0.5 * math.erfc(res["z"] / math.sqrt(2)))
    # annualising scales the difference and its error alike, not z
    year = sharpe_difference_test(a, b, 252.0)
    assert year["diff"] == pytest.approx(res["diff"] * math.sqrt(252)) and year["z"] == pytest.approx(res["z"])


def test_paired_test_degenerate_cases():
    rng = np.random.default_rng(21)
    b = rng.normal(-0.0015, 0.02, N_TEST)  # a losing market
    flat = sharpe_difference_test(np.zeros(N_TEST), b, 252)
    assert flat["diff"] == pytest.approx(-sharpe_ratio(b, 252))
    # a flat agent beats a losing buy-and-hold only as far as buy-and-hold's loss is itself significant:
    # the old "PSR against buy-and-hold's Sharpe" said 1.0 whenever that Sharpe was below 0
    assert probabilistic_sharpe_ratio(np.zeros(N_TEST), sharpe_ratio(b, 252), 252) == 1.0
    assert 0.05 < flat["p_value"] < 0.95
    same = sharpe_difference_test(b, b.copy(), 252)
    assert same["diff"] == 0 and same["p_value"] == 0.5
    with pytest.raises(ValueError, match="one length"):
        sharpe_difference_test(b, b[:-1], 252)


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_paired_test_is_calibrated_under_the_null(kind):
    # equal true Sharpe ratios: the one-sided test rejects ~5%, the two-sided 95% interval covers 0 ~95%
    rates = paired_rates(kind, 1000, seed=30)
    print(f"\n{kind}: {rates}")
    assert 0.03 <= rates["reject"] <= 0.075
    assert 0.925 <= rates["cover"] <= 0.97
    if kind == "independent":  # the old rule treated buy-and-hold's sample Sharpe as known: ~11%
        assert rates["old_psr"] > 0.08


def test_the_hac_error_is_what_keeps_the_test_calibrated():
    # switched off (the i.i.d. delta method: no bandwidth, no prewhitening), autocorrelated P&L breaks it
    iid = paired_rates("autocorrelated", 1000, seed=30, bandwidth=0, prewhiten=False)
    print(f"\nautocorrelated, i.i.d. standard error: {iid}")
    assert iid["reject"] > 0.09 and iid["cover"] < 0.9


def test_paired_test_power_on_a_real_edge():
    # an edge of +1.0 annual Sharpe over 604 daily bars is found about a third of the time (independent
    # streams) to about 60% of the time (correlation .7): 600 bars cannot do better
    for kind, lo in (("independent", 0.2), ("correlated", 0.45)):
        rates = paired_rates(kind, 400, edge=1.0, seed=31)
        print(f"\n{kind}, edge +1.0: power {rates['reject']:.3f}, interval covers the edge {rates['cover']:.3f}")
        assert rates["reject"] > lo
        assert 0.9 <= rates["cover"] <= 0.98


def test_binomial_interval_hand_computed():
    lo, hi = binomial_interval(0.05, 1000)  # 50 of 1000: Clopper-Pearson [.0373, .0654]
    assert lo == pytest.approx(0.0373, abs=2e-4) and hi == pytest.approx(0.0654, abs=2e-4)
    assert binomial_interval(0.0, 100)[0] == 0.0 and binomial_interval(1.0, 100)[1] == 1.0


# ---- block bootstrap ----


def test_block_bootstrap_indices_are_circular_blocks():
    idx = block_bootstrap_indices(10, 50, 3, seed=0)
    assert idx.shape == (50, 10) and idx.min() >= 0 and idx.max() <= 9
    for row in idx:
        for k in range(0, 9, 3):
            blk = row[k : min(k + 3, 10)]
            assert np.array_equal(blk, (blk[0] + np.arange(len(blk))) % 10)
    assert np.array_equal(idx, block_bootstrap_indices(10, 50, 3, seed=0))  # seeded


def test_block_length_follows_the_dependence_and_covers_a_day():
    rng = np.random.default_rng(40)
    iid = rng.normal(size=2000)
    ar = np.empty(2000)
    ar[0] = 0
    for t in range(1, 2000):
        ar[t] = 0.8 * ar[t - 1] + rng.normal()
    assert block_length(iid) <= 5 < block_length(ar)
    assert block_length(iid, min_block=26) == 26  # intraday: at least a trading day of bars
    assert block_length(np.zeros(100)) == 1


def test_bootstrap_interval_covers_the_true_sharpe():
    # i.i.d. normal returns with annualised Sharpe 1: the 90% interval covers it in ~90% of samples
    rng = np.random.default_rng(4)
    mu, sd, n = 0.01 / math.sqrt(252), 0.01, 504
    hits = []
    for i in range(150):
        ci = bootstrap_sharpe(rng.normal(mu, sd, n), 252, samples=400, level=0.90, seed=i)
        hits.append(ci["low"] <= 1.0 <= ci["high"])
    assert 0.8 < np.mean(hits) < 0.97


# ---- the verdict ----


def _results(agent: np.ndarray, bh: np.ndarray) -> dict:
    import pandas as pd

    from src.evaluation.metrics import compute_metrics
    from src.evaluation.walk import EvalResult

    idx = pd.date_range("2024-01-02", periods=len(agent), freq="B")

    def one(r):
        led = pd.DataFrame({"net_return": r, "position": 1.0, "turnover": 0.0}, index=idx)
        return EvalResult("test", led, compute_metrics(r, np.ones(len(r)), np.zeros(len(r)), 252))

    return {"agent": one(agent), "buy_and_hold": one(bh)}


def test_verdict_uses_the_paired_test_and_says_so():
    from src.evaluation.verdict import verdict

    rng = np.random.default_rng(6)
    bh = rng.normal(0.0004, 0.01, 500)
    strong = verdict({"val": _results(bh + 0.002, bh), "test": _results(bh + 0.002, bh)}, 252, [0.1, 0.3, 2.0])
    assert strong["beat_buy_and_hold"] and "BEAT buy-and-hold at the 95% level" in strong["sentence"]
    assert strong["test"]["p_value_vs_bh"] < 0.05 and strong["test"]["sharpe_minus_bh_ci_low"] > 0
    assert strong["val"]["selected_from"] == 3 and 0 < strong["val"]["deflated_sharpe_ratio"] <= 1
    # a higher Sharpe on the sample from returns of their own: nowhere near significant. (A constant 2 bp a
    # bar on top of buy-and-hold's own returns would be: the paired test sees that the noise is shared.)
    weak = verdict({"test": _results(rng.normal(0.0008, 0.01, 500), bh)}, 252)
    assert weak["test"]["sharpe"] > weak["test"]["buy_and_hold_sharpe"]
    assert not weak["beat_buy_and_hold"] and "did NOT beat" in weak["sentence"]
    assert weak["test"]["p_value_vs_bh"] > 0.05
    # judged on a split the agent was selected or trained on: the sentence says it is in sample
    val_only = verdict({"val": _results(bh + 0.002, bh)}, 252)
    assert val_only["in_sample"] and "IN SAMPLE" in val_only["sentence"]
    assert not strong["in_sample"] and "IN SAMPLE" not in strong["sentence"]
    # one check: nothing was selected among several, and the figure says so
    one = verdict({"val": _results(bh + 0.002, bh)}, 252, [0.5])
    assert one["val"]["selected_from"] == 1 and one["val"]["expected_max_sharpe"] == 0.0


def test_too_few_bars_get_no_verdict_but_say_so():
    from src.evaluation.verdict import verdict

    bh = np.random.default_rng(7).normal(0.0004, 0.01, 6)
    v = verdict({"val": _results(bh + 0.01, bh), "test": _results(bh + 0.01, bh)}, 252, [0.1, 0.5])
    assert not v["beat_buy_and_hold"] and "too few for any test" in v["sentence"]
    assert math.isnan(v["test"]["p_value_vs_bh"]) and "deflated_sharpe_ratio" not in v["val"]


def test_min_detectable_difference_has_the_power_it_claims():
    """n = 3 seeds per arm, sd 1: the exact noncentral-t answer is 3.071 sd (the normal approximation
    (1.96 + 0.84) x sqrt(2 / 3) = 2.29 would claim more than 3 seeds can show); simulated, a true difference of that
    size is detected by the two-sample t-test 80% of the time, and half of it far less often."""
    import numpy as np
    from scipy.stats import ttest_ind

    from src.evaluation.stats import min_detectable_difference

    d = min_detectable_difference(1.0, 3)
    assert d == pytest.approx(3.0709, abs=1e-3)
    assert min_detectable_difference(0.5, 3) == pytest.approx(d / 2)  # proportional to the spread
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 20000, 3))
    assert (ttest_ind(b + d, a, axis=1).pvalue < 0.05).mean() == pytest.approx(0.80, abs=0.01)
    assert (ttest_ind(b + d / 2, a, axis=1).pvalue < 0.05).mean() < 0.4


def test_holm_and_the_mean_interval_by_hand():
    from src.evaluation.stats import holm, mean_interval

    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    s = mean_interval([1.0, 2.0, 3.0, 4.0])  # t(0.975, 3) = 3.18245, sd = 1.29099, half = 3.18245 * 1.29099 / 2
    assert (s["mean"], s["std"]) == pytest.approx((2.5, 1.2909944))
    assert (s["low"], s["high"]) == pytest.approx((2.5 - 2.0542603, 2.5 + 2.0542603))
    assert math.isnan(mean_interval([1.0])["low"])


def test_holm_and_the_mean_interval_are_calibrated_by_simulation():
    """Under a null, Holm's family-wise error over 8 correlated one-sided tests stays at or below 5% (about 5%
    with independent tests), and the t interval of a mean of 5 normal values covers the truth 95% of the time."""
    from scipy.stats import norm

    from src.evaluation.stats import holm, mean_interval

    rng = np.random.default_rng(0)
    sims = 4000
    for rho in (0.0, 0.5):
        z = np.sqrt(rho) * rng.standard_normal((sims, 1)) + np.sqrt(1 - rho) * rng.standard_normal((sims, 8))
        p = norm.sf(z)
        fwer = np.mean([min(holm(row)) <= 0.05 for row in p])
        assert fwer <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims)
        if rho == 0.0:
            assert fwer > 0.04  # not needlessly conservative with independent tests (exact: 1 - 0.95 ** ... ~ 4.9%)
    x = rng.normal(1.0, 2.0, (sims, 5))
    cover = np.mean([(lambda s: s["low"] <= 1.0 <= s["high"])(mean_interval(row)) for row in x])
    assert abs(cover - 0.95) < 3 * np.sqrt(0.05 * 0.95 / sims)
