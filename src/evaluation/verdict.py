"""The honest verdict of a run: how confident can we be that the agent beat buy-and-hold out of sample?

Every figure comes from :mod:`src.evaluation.stats` (and the Sharpe ratios from :mod:`src.evaluation.metrics`); this
module only assembles them and says the result in one sentence. The agent "beat buy-and-hold" on the judged period
only when the paired test of the two Sharpe ratios on the same bars (Ledoit & Wolf 2008) rejects "the agent's true
Sharpe is at most buy-and-hold's" at the stated level: both estimates are noisy, correlated and autocorrelated, and
the test accounts for all three. The validation figure of the selected checkpoint is the best of every validation
check, so it is also shown deflated for that selection (Bailey & López de Prado 2014).
"""

from __future__ import annotations

from collections.abc import Sequence

from src.evaluation.stats import (
    bootstrap_sharpe,
    probabilistic_sharpe_ratio,
    selection_benchmark,
    sharpe_difference_test,
)
from src.evaluation.walk import EvalResult, excess_series

IN_SAMPLE = {
    "train": "IN SAMPLE: the agent was trained on these bars, so these figures say nothing about skill",
    "val": "IN SAMPLE: the checkpoint was selected on these bars, so these figures are optimistic",
}
OVERLAP = "IN SAMPLE: these bars overlap the ones the agent was trained or selected on, so these figures are optimistic"
MIN_BARS = 10  # fewer bars than this: no test, no interval (a verdict needs a sample)


def split_significance(
    res: dict[str, EvalResult], bars_per_year: float, level: float = 0.95, seed: int = 0, bars_per_day: int = 1
) -> dict[str, float]:
    """Sharpe, PSR against 0, a block-bootstrap interval, and the paired test against buy-and-hold."""
    agent = excess_series(res["agent"].ledger)
    bh = excess_series(res["buy_and_hold"].ledger)
    idx = res["agent"].ledger.index
    out = {
        "first": str(idx[0]),
        "last": str(idx[-1]),
        "bars": len(agent),
        "sharpe": res["agent"].metrics["sharpe"],
        "buy_and_hold_sharpe": res["buy_and_hold"].metrics["sharpe"],
    }
    if len(agent) < MIN_BARS:  # a split this short supports no inference: say so rather than guess
        nan = float("nan")
        keys = ("psr_vs_zero", "sharpe_ci_low", "sharpe_ci_high", "bootstrap_block", "sharpe_minus_bh")
        keys += ("sharpe_minus_bh_se", "sharpe_minus_bh_ci_low", "sharpe_minus_bh_ci_high", "p_value_vs_bh")
        return out | dict.fromkeys(keys, nan)
    boot = bootstrap_sharpe(agent, bars_per_year, level=level, min_block=bars_per_day, seed=seed)
    paired = sharpe_difference_test(agent, bh, bars_per_year, level)
    return out | {
        "psr_vs_zero": probabilistic_sharpe_ratio(agent, 0.0, bars_per_year),
        "sharpe_ci_low": boot["low"],
        "sharpe_ci_high": boot["high"],
        "bootstrap_block": boot["block"],
        "sharpe_minus_bh": paired["diff"],
        "sharpe_minus_bh_se": paired["se"],
        "sharpe_minus_bh_ci_low": paired["ci_low"],
        "sharpe_minus_bh_ci_high": paired["ci_high"],
        "p_value_vs_bh": paired["p_value"],
    }


def selection(val: dict[str, EvalResult], val_sharpes: Sequence[float], bars_per_year: float) -> dict[str, float]:
    """The deflated Sharpe ratio of the selected checkpoint's validation figure, given every check it was
    selected from (:func:`src.evaluation.stats.selection_benchmark`: N = the number of checks, V their variance)."""
    bench = selection_benchmark(list(val_sharpes), bars_per_year)
    returns = excess_series(val["agent"].ledger)
    dsr = probabilistic_sharpe_ratio(returns, bench["expected_max_sharpe"], bars_per_year)  # the deflated SR
    return {
        "selected_from": bench["checks"],
        "effective_trials": bench["effective_trials"],
        "checks_sharpe_std": bench["sharpe_std"],
        "expected_max_sharpe": bench["expected_max_sharpe"],
        "deflated_sharpe_ratio": dsr,
    }


def verdict(
    results: dict[str, dict[str, EvalResult]],
    bars_per_year: float,
    val_sharpes: Sequence[float] = (),
    level: float = 0.95,
    bars_per_day: int = 1,
    in_sample: bool | None = None,
) -> dict:
    """Significance of every split, and the one-sentence verdict on the test period (else the last split).

    Args:
        results: ``{"val": ..., "test": ...}`` evaluations of the selected checkpoint (``src.evaluate`` may
            judge any one split: a train or val split is labelled in-sample).
        val_sharpes: validation Sharpe at *every* check the checkpoint was selected from (for the deflated
            Sharpe ratio of the validation figure); empty when unknown.
        level: the confidence the paired test must reach.
        bars_per_day: the bootstrap's shortest block (a trading day of intraday bars).
        in_sample: whether the judged split trained or selected the agent (None: a train or val split is).
    """
    out = {s: split_significance(res, bars_per_year, level, bars_per_day=bars_per_day) for s, res in results.items()}
    if "val" in out and len(val_sharpes) > 0 and out["val"]["bars"] >= MIN_BARS:
        out["val"].update(selection(results["val"], val_sharpes, bars_per_year))
    judged = "test" if "test" in results else list(results)[-1]
    t = out[judged]
    beat = bool(t["p_value_vs_bh"] <= 1 - level)  # False when NaN (too few bars)
    out["level"] = level
    out["judged_split"] = judged
    out["in_sample"] = (judged in IN_SAMPLE) if in_sample is None else bool(in_sample)
    out["beat_buy_and_hold"] = bool(beat)
    where = f"{judged} period ({t['first'][:10]} to {t['last'][:10]}, {t['bars']} bars)"
    if out["in_sample"]:
        where += f" ({IN_SAMPLE.get(judged, OVERLAP)})"
    pct = f"{100 * level:.0f}%"
    if t["bars"] < MIN_BARS:
        out["sentence"] = (
            f"On the {where} the agent did NOT beat buy-and-hold: {t['bars']} bars are too few for any test "
            f"(at least {MIN_BARS}); Sharpe {t['sharpe']:.2f} vs {t['buy_and_hold_sharpe']:.2f}."
        )
        return out
    out["sentence"] = (
        f"On the {where} the agent {'BEAT' if beat else 'did NOT beat'} buy-and-hold at the {pct} level: Sharpe "
        f"{t['sharpe']:.2f} vs {t['buy_and_hold_sharpe']:.2f}, a difference of {t['sharpe_minus_bh']:+.2f} "
        f"({pct} interval [{t['sharpe_minus_bh_ci_low']:.2f}, {t['sharpe_minus_bh_ci_high']:.2f}]; one-sided "
        f"p = {t['p_value_vs_bh']:.3f} in the paired test of the two Sharpe ratios on the same bars); {pct} "
        f"interval of its own Sharpe [{t['sharpe_ci_low']:.2f}, {t['sharpe_ci_high']:.2f}]."
    )
    return out
