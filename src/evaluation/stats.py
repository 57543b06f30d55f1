"""Statistical inference on Sharpe ratios: every test and interval a report shows, computed here only.

Inputs are per-bar returns in excess of the cash rate (:func:`src.evaluation.metrics.excess_returns`; the same as
net returns when cash earns nothing). Per-bar Sharpe ratios inside the formulas; arguments and results
in the annualised units every report uses. Each function is tested against hand-computed values and,
for tests and intervals, by simulation under a null (``tests/evaluation/test_significance.py``).

- :func:`probabilistic_sharpe_ratio`: P(true Sharpe > a *known* benchmark), Bailey & López de Prado (2012).
- :func:`sharpe_difference_test`: the paired test of two Sharpe ratios measured on the same bars (the
  agent against buy-and-hold): Ledoit & Wolf (2008), delta method with a HAC covariance, so both
  estimates' noise, their correlation, fat tails and autocorrelation are accounted for.
- :func:`selection_benchmark` and :func:`deflated_sharpe_ratio`: the Sharpe the best of the candidates a
  selection looked at reaches by luck, and the PSR against it, Bailey & López de Prado (2014), with the
  number of *effective* trials when candidates come in correlated groups (the checkpoints of a run).
- :func:`bootstrap_sharpe`: a circular block bootstrap interval (Politis & Romano 1992) with the block
  length of Politis & White (2004, corrected by Patton, Politis & White 2009), never under a day of bars.
- :func:`mean_interval`: the Student-t interval of a mean over independent runs (a population's members).
- :func:`paired_difference`: the paired t-test and interval of per-seed differences (a suite's candidate vs baseline).
- :func:`holm`: Holm's (1979) step-down adjusted p-values, valid under any dependence between the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

EULER_GAMMA = 0.5772156649015329


def _moments(r: np.ndarray) -> tuple[float, float, float]:
    """Per-bar Sharpe (ddof 1, as :func:`src.evaluation.metrics.sharpe_ratio`), skewness and (non-excess) kurtosis."""
    sd = r.std(ddof=1)
    c = r - r.mean()
    m2 = float(np.mean(c**2))
    if sd == 0 or m2 == 0:
        return 0.0, 0.0, 3.0
    return float(r.mean() / sd), float(np.mean(c**3) / m2**1.5), float(np.mean(c**4) / m2**2)


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sharpe: float, bars_per_year: float) -> float:
    """P(true Sharpe > ``benchmark_sharpe``) given the observed returns (Bailey & López de Prado, 2012).

    PSR = Φ((SR − SR*)·√(n − 1) / √(1 − γ₃·SR + (γ₄ − 1)/4·SR²)), SR per bar, γ₃ skewness, γ₄ kurtosis:
    the Sharpe estimate's standard error under non-normal returns. ``benchmark_sharpe`` (annualised) is
    taken as *known*: to compare with another measured Sharpe use :func:`sharpe_difference_test`.
    """
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    if n < 3:
        raise ValueError(f"the probabilistic Sharpe ratio needs at least 3 returns, got {n}")
    sr, skew, kurt = _moments(r)
    if r.std() == 0:  # constant returns: Sharpe 0 by convention (see sharpe_ratio), known exactly
        return float(benchmark_sharpe < 0)
    bench = benchmark_sharpe / math.sqrt(bars_per_year)
    var = max(1 - skew * sr + (kurt - 1) / 4 * sr**2, 1e-12)  # tiny only for pathological samples
    return float(norm.cdf((sr - bench) * math.sqrt(n - 1) / math.sqrt(var)))


# ---- selection: the best of N candidates ----


def expected_max(n: float) -> float:
    """E[max] of ``n`` independent standard normals, Bailey & López de Prado's (2014) approximation
    (1 − γ)·Φ⁻¹(1 − 1/n) + γ·Φ⁻¹(1 − 1/(n·e)), γ Euler's constant; 0 for n <= 1."""
    if n <= 1:
        return 0.0
    return float((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n) + EULER_GAMMA * norm.ppf(1 - 1 / (n * math.e)))


def _groups(candidates: Sequence[float] | Sequence[Sequence[float]]) -> list[np.ndarray]:
    """A flat sequence of Sharpe ratios is one group (the checks of one run); a nested one, one per trial."""
    items = list(candidates)
    if items and np.ndim(items[0]) == 0:
        return [np.asarray(items, dtype=np.float64)]
    return [np.asarray(g, dtype=np.float64).reshape(-1) for g in items if len(g)]


def selection_benchmark(candidates: Sequence[float] | Sequence[Sequence[float]], bars_per_year: float) -> dict:
    """The Sharpe the best candidate reaches by luck alone, and the effective number of trials behind it.

    ``candidates`` are the (annualised) Sharpe ratios of everything a selection chose from: a run's
    validation checks (one group), or the checks of every trial of a sweep (one group per trial).

    Rule (Bailey & López de Prado 2014: E[max SR] = √V · E[max of N standard normals], with N the number of
    *independent* trials and V the variance of the candidates' Sharpe estimates): V is the variance of
    every candidate's Sharpe (ddof 1). The checks of one trial are correlated (consecutive weights of one
    run, judged on the same bars), so a trial of m checks counts ρ + (1 − ρ)·m trials, where
    ρ = 1 − V_trial / V is the share of the Sharpe variance that its checks do *not* spread over (their
    intraclass correlation, clipped to [0, 1]): checks that all agree count as one trial, checks as
    dispersed as independent trials count m. For equicorrelated normal candidates this N reproduces their
    expected maximum to within a few percent; with one trial, ρ = 0 and N = m, and there the correlation is
    already in V (correlated checks disperse less), which is the right pairing for a single run.

    Returns ``{"trials", "checks", "effective_trials", "sharpe_std", "expected_max_sharpe"}`` (annualised).
    """
    groups = _groups(candidates)
    every = np.concatenate(groups) if groups else np.zeros(0)
    m = len(every)
    out = {"trials": len(groups), "checks": m, "effective_trials": float(m), "sharpe_std": 0.0}
    if m < 2:
        out["expected_max_sharpe"] = 0.0
        return out
    v = float(every.var(ddof=1))
    n_eff = 0.0
    for g in groups:
        rho = 1.0 if len(g) < 2 or v == 0 else min(max(1.0 - float(g.var(ddof=1)) / v, 0.0), 1.0)
        n_eff += rho + (1 - rho) * len(g) if len(groups) > 1 else len(g)
    out["effective_trials"] = n_eff
    out["sharpe_std"] = math.sqrt(v)
    out["expected_max_sharpe"] = math.sqrt(v) * expected_max(n_eff)  # annualised in, annualised out
    return out


def deflated_sharpe_ratio(
    returns: np.ndarray, candidates: Sequence[float] | Sequence[Sequence[float]], bars_per_year: float
) -> float:
    """PSR of the selected candidate's ``returns`` against :func:`selection_benchmark`'s expected maximum."""
    bench = selection_benchmark(candidates, bars_per_year)["expected_max_sharpe"]
    return probabilistic_sharpe_ratio(returns, bench, bars_per_year)


# ---- the paired test: two Sharpe ratios on the same bars ----


def _long_run_variance(x: np.ndarray, bandwidth: float | None, prewhiten: bool) -> float:
    """Long-run variance of a series: Bartlett kernel with Newey-West's bandwidth, after an AR(1) prewhitening
    (the AR coefficient clipped to [-0.97, 0.97]) when ``prewhiten``."""
    from arch.covariance.kernel import Bartlett

    x = x - x.mean()
    rho = 0.0
    if prewhiten:
        den = float(x[:-1] @ x[:-1])
        rho = min(max(float(x[1:] @ x[:-1]) / den, -0.97), 0.97) if den > 0 else 0.0
        x = x[1:] - rho * x[:-1]
    lrv = float(np.asarray(Bartlett(x[:, None], bandwidth=bandwidth, center=prewhiten).cov.long_run)[0, 0])
    return lrv / (1 - rho) ** 2


def sharpe_difference_test(
    returns: np.ndarray,
    benchmark: np.ndarray,
    bars_per_year: float,
    level: float = 0.95,
    bandwidth: float | None = None,
    prewhiten: bool = True,
) -> dict[str, float]:
    """Ledoit & Wolf (2008) inference on Δ = SR(returns) − SR(benchmark), both measured on the same bars.

    Δ is a smooth function of u = (μ₁, μ₂, E r₁², E r₂²); by the delta method its variance is the long-run
    variance of the influence series ψ_t = ∇Δ · (r₁ − μ₁, r₂ − μ₂, r₁² − E r₁², r₂² − E r₂²)_t over T, which
    is ∇Δ' Ψ ∇Δ / T with Ψ the long-run (HAC) covariance of the moment series. It is estimated on ψ itself,
    as Ledoit & Wolf do: prewhitened by an AR(1) fit (Andrews & Monahan 1992), then the Bartlett kernel with
    the data-driven bandwidth of Newey & West (1994) (``arch``) on the residuals, recoloured by 1 / (1 − ρ)².
    So the bandwidth follows the dependence that matters for Δ, and the estimates' correlation, fat tails
    and autocorrelation all enter (``bandwidth=0, prewhiten=False`` is the i.i.d. delta method). A series
    with zero variance (a flat agent) has a Sharpe of exactly 0 and contributes no noise; when the two
    series' noise cancels exactly (one is a positive multiple of the other) the difference is known: 0.

    Returns the annualised ``diff`` and ``se``, ``z``, the one-sided ``p_value`` of H0: SR(returns) <=
    SR(benchmark) (small = evidence that ``returns`` is the better), and the two-sided ``level`` interval
    ``ci_low``/``ci_high`` of Δ.
    """
    a, b = np.asarray(returns, dtype=np.float64), np.asarray(benchmark, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"the paired test needs two return series of one length, got {a.shape} and {b.shape}")
    n = len(a)
    if n < 10:
        raise ValueError(f"the paired Sharpe test needs at least 10 returns, got {n}")
    diff, psi, scale_psi = sharpe_difference_influence(a, b)
    return difference_result(diff, psi, scale_psi, bars_per_year, level, bandwidth, prewhiten)


def sharpe_difference_influence(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Per-bar Δ = SR(a) − SR(b), its influence series ψ_t (see :func:`sharpe_difference_test`) and the
    larger of the two series' own influence scales (what tells "the noise cancels" from "no noise")."""
    psi, diff, scale_psi = np.zeros(len(a)), 0.0, 0.0
    for r, sign in ((a, 1.0), (b, -1.0)):
        mu, g = float(r.mean()), float(np.mean(r**2))
        var = g - mu**2
        if r.std() == 0 or var <= 0:
            continue  # Sharpe exactly 0: nothing to estimate
        diff += sign * float(r.mean() / r.std(ddof=1))
        term = sign * (g * (r - mu) - mu / 2 * (r**2 - g)) / var**1.5
        psi += term
        scale_psi = max(scale_psi, float(np.sqrt(np.mean(term**2))))
    return diff, psi, scale_psi


def difference_result(
    diff: float, psi: np.ndarray, scale_psi: float, bars_per_year: float, level: float, bandwidth, prewhiten
) -> dict[str, float]:
    """The annualised test of a per-bar Sharpe difference from its influence series (HAC long-run variance)."""
    n = len(psi)
    se = 0.0
    if scale_psi > 0 and float(np.sqrt(np.mean(psi**2))) > 1e-9 * scale_psi:  # else: the noise cancels exactly
        se = math.sqrt(max(_long_run_variance(psi, bandwidth, prewhiten), 0.0) / n)
    else:
        diff = 0.0  # identical noise (or none at all): equal Sharpe ratios up to rounding
    scale = math.sqrt(bars_per_year)
    z = diff / se if se > 0 else 0.0
    q = float(norm.ppf((1 + level) / 2))
    return {
        "diff": diff * scale,
        "se": se * scale,
        "z": z,
        "p_value": float(norm.sf(z)),
        "ci_low": (diff - q * se) * scale,
        "ci_high": (diff + q * se) * scale,
    }


# ---- block bootstrap interval of one Sharpe ratio ----


def block_length(returns: np.ndarray, min_block: int = 1) -> int:
    """Circular-bootstrap block length of Politis & White (2004) with Patton, Politis & White's (2009)
    correction (``arch.bootstrap.optimal_block_length``), rounded up, and at least ``min_block`` bars
    (a trading day on intraday data: the day's pattern of volatility stays inside a block)."""
    from arch.bootstrap import optimal_block_length

    r = np.asarray(returns, dtype=np.float64)
    b = 1.0
    if len(r) >= 10 and r.std() > 0:
        b = float(optimal_block_length(r)["circular"].iloc[0])
    b = b if math.isfinite(b) else 1.0
    return int(min(max(math.ceil(b), int(min_block), 1), max(len(r) // 2, 1)))


def block_bootstrap_indices(n: int, samples: int, block: int, seed: int) -> np.ndarray:
    """(samples, n) indices of a circular block bootstrap (Politis & Romano, 1992).

    Blocks of consecutive bars keep the short-range dependence (volatility clustering) of returns that an
    i.i.d. bootstrap (e.g. ``scipy.stats.bootstrap``) would destroy and so understate the spread.
    """
    rng = np.random.default_rng(seed)
    k = -(-n // block)
    starts = rng.integers(0, n, size=(samples, k, 1))
    return ((starts + np.arange(block)) % n).reshape(samples, k * block)[:, :n]


def _sharpe_rows(r: np.ndarray, bars_per_year: float) -> np.ndarray:
    sd = r.std(axis=1, ddof=1)
    return np.where(sd > 0, r.mean(axis=1) / np.where(sd > 0, sd, 1) * math.sqrt(bars_per_year), 0.0)


def bootstrap_sharpe(
    returns: np.ndarray,
    bars_per_year: float,
    samples: int = 2000,
    level: float = 0.95,
    block: int | None = None,
    min_block: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile ``level`` interval of the annualised Sharpe by circular block bootstrap.

    ``block`` defaults to :func:`block_length` (Politis & White, at least ``min_block`` bars).
    """
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    if n < 3:
        raise ValueError(f"the bootstrap needs at least 3 returns, got {n}")
    block = int(block or block_length(r, min_block))
    s = _sharpe_rows(r[block_bootstrap_indices(n, samples, block, seed)], bars_per_year)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    return {"low": float(np.quantile(s, lo_q)), "high": float(np.quantile(s, hi_q)), "block": block}


def min_detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8, paired: bool = False
) -> float:
    """The smallest true difference in means that a two-sided two-sample t-test on ``n`` runs per arm (equal
    spread ``sd``) detects at level ``alpha`` with probability ``power``: the exact noncentral-t solution,
    delta = ncp * sd * sqrt(2 / n) with P(|T'(df = 2n - 2, ncp)| > t_crit) = power. What an experiment of n seeds
    per variant could have told apart, stated beside its table (``experiments/compare.py`` runs this test).
    ``paired``: the one-sample t-test of ``n`` paired differences of spread ``sd``
    (df = n - 1, delta = ncp sd / sqrt n).
    """
    from scipy.optimize import brentq
    from scipy.stats import nct
    from scipy.stats import t as student

    if n < 2 or sd < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need n >= 2, sd >= 0, alpha and power in (0, 1); got {n}, {sd}, {alpha}, {power}")
    df, scale = (n - 1, math.sqrt(1.0 / n)) if paired else (2 * n - 2, math.sqrt(2.0 / n))
    crit = student.ppf(1 - alpha / 2, df)

    def shortfall(ncp: float) -> float:  # scipy's tail is NaN far out, where the power is 1
        upper, lower = np.nan_to_num(nct.sf(crit, df, ncp), nan=1.0), np.nan_to_num(nct.cdf(-crit, df, ncp), nan=0.0)
        return float(upper + lower) - power

    return float(brentq(shortfall, 0.0, 50.0) * sd * scale)


def mean_interval(x: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the two-sided Student-t ``level`` interval of the mean of independent values
    (NaN values dropped; the interval is NaN below two values)."""
    from scipy.stats import t as student

    v = np.asarray([a for a in x if not math.isnan(a)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "low": float("nan"), "high": float("nan")}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": float("nan"), "low": float("nan"), "high": float("nan")}
    sd = float(v.std(ddof=1))
    half = float(student.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "std": sd, "low": mean - half, "high": mean + half}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: reject hypothesis i at family-wise level a when its adjusted p <= a.
    The i-th smallest p is multiplied by (m - i + 1), then running maxima keep the order; capped at 1. NaN stays
    NaN and does not count as a test."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of the paired differences ``a_i - b_i`` (pairs with a NaN dropped), its Student-t ``level`` interval,
    the two-sided p-value of the paired t-test, and the smallest true difference it detects with 80% power."""
    from scipy.stats import t as student

    d = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    out = mean_interval(d, level)
    n, sd = out["n"], out["std"]
    if n < 2 or not sd > 0:
        return out | {"p_value": float("nan"), "detectable": float("nan")}
    t = out["mean"] / (sd / math.sqrt(n))
    p = float(2 * student.sf(abs(t), n - 1))
    return out | {"p_value": p, "detectable": min_detectable_difference(sd, n, 1 - level, paired=True)}
