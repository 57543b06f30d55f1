"""The paired Sharpe test's false-positive rate on short samples.

``python experiments/statistics_calibration/short_samples.py``.

Two return streams with the same true Sharpe (0.7 a year, 2% daily volatility, correlation 0 or 0.6), n bars;
the share of draws where the one-sided test rejects at 5% (:func:`src.evaluation.stats.sharpe_difference_test`, as every
verdict uses it). Seed 0, 3000 draws per row; prints markdown with Clopper-Pearson intervals.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from src.evaluation.stats import sharpe_difference_test


def main(draws: int = 3000) -> None:
    rng = np.random.default_rng(0)
    mu = 0.7 / np.sqrt(252) * 0.02
    print("| correlation | bars | rejects (nominal 5%) |\n|---:|---:|---:|")
    for rho in (0.0, 0.6):
        for n in (20, 40, 60, 120, 252):
            k = 0
            for _ in range(draws):
                e1, e2 = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)
                a, b = mu + e1, mu + rho * e1 + np.sqrt(1 - rho**2) * e2
                k += sharpe_difference_test(a, b, 252.0)["p_value"] <= 0.05
            lo = beta.ppf(0.025, k, draws - k + 1) if k else 0.0
            hi = beta.ppf(0.975, k + 1, draws - k) if k < draws else 1.0
            print(f"| {rho} | {n} | {k / draws:.1%} [{lo:.1%}, {hi:.1%}] |")


if __name__ == "__main__":
    main()
