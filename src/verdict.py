"""The honest verdict of a run: how confident can we be that the agent beat buy-and-hold out of sample?

Every figure comes from :mod:`src.metrics`; this module only assembles them and says the result in one
sentence. The agent "beat buy-and-hold with confidence" on the test period only when both tests agree at
the stated level: the probabilistic Sharpe ratio against buy-and-hold's test Sharpe, and the share of
paired block-bootstrap resamples (the same bars for both) in which the agent's Sharpe is the higher.
The validation figure of the selected checkpoint is the best of several looks, so it is also shown
deflated by the number of validations it was selected from.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.evaluation import EvalResult
from src.metrics import bootstrap_sharpe, deflated_sharpe_ratio, probabilistic_sharpe_ratio


def split_significance(
    res: dict[str, EvalResult], bars_per_year: float, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Sharpe, PSR against 0 and against buy-and-hold, and block-bootstrap intervals for one split."""
    agent = res["agent"].ledger["net_return"].to_numpy()
    bh = res["buy_and_hold"].ledger["net_return"].to_numpy()
    bh_sharpe = res["buy_and_hold"].metrics["sharpe"]
    boot = bootstrap_sharpe(agent, bars_per_year, benchmark=bh, level=level, seed=seed)
    idx = res["agent"].ledger.index
    return {
        "first": str(idx[0]),
        "last": str(idx[-1]),
        "bars": len(agent),
        "sharpe": res["agent"].metrics["sharpe"],
        "buy_and_hold_sharpe": bh_sharpe,
        "psr_vs_zero": probabilistic_sharpe_ratio(agent, 0.0, bars_per_year),
        "psr_vs_buy_and_hold": probabilistic_sharpe_ratio(agent, bh_sharpe, bars_per_year),
        "sharpe_ci_low": boot["low"],
        "sharpe_ci_high": boot["high"],
        "sharpe_minus_bh_ci_low": boot["diff_low"],
        "sharpe_minus_bh_ci_high": boot["diff_high"],
        "p_bootstrap_beats_bh": boot["p_better"],
        "bootstrap_block": boot["block"],
    }


def verdict(
    results: dict[str, dict[str, EvalResult]],
    bars_per_year: float,
    val_sharpes: Sequence[float] = (),
    level: float = 0.95,
) -> dict:
    """Significance of every split, and the one-sentence verdict on the test period (else the last split).

    Args:
        results: ``{"val": ..., "test": ...}`` evaluations of the selected checkpoint.
        val_sharpes: validation Sharpe at every check the checkpoint was selected from (for the deflated
            Sharpe ratio of the validation figure); empty when unknown.
        level: the confidence both tests must reach.
    """
    out = {split: split_significance(res, bars_per_year, level) for split, res in results.items()}
    if "val" in out and len(val_sharpes) > 1:
        agent = results["val"]["agent"].ledger["net_return"].to_numpy()
        out["val"]["deflated_sharpe_ratio"] = deflated_sharpe_ratio(agent, list(val_sharpes), bars_per_year)
        out["val"]["selected_from"] = len(val_sharpes)
    judged = "test" if "test" in results else list(results)[-1]  # src.evaluate may judge any one split
    t = out[judged]
    beat = t["psr_vs_buy_and_hold"] >= level and t["p_bootstrap_beats_bh"] >= level
    out["level"] = level
    out["judged_split"] = judged
    out["beat_buy_and_hold"] = bool(beat)
    out["sentence"] = (
        f"On the {judged} period ({t['first'][:10]} to {t['last'][:10]}, {t['bars']} bars) the agent "
        f"{'BEAT' if beat else 'did NOT beat'} buy-and-hold with {100 * level:.0f}% confidence: Sharpe "
        f"{t['sharpe']:.2f} vs {t['buy_and_hold_sharpe']:.2f}; probability that its true Sharpe exceeds "
        f"buy-and-hold's (PSR) {t['psr_vs_buy_and_hold']:.2f}; its Sharpe was the higher in "
        f"{100 * t['p_bootstrap_beats_bh']:.0f}% of block-bootstrap resamples; {100 * level:.0f}% interval of "
        f"its Sharpe [{t['sharpe_ci_low']:.2f}, {t['sharpe_ci_high']:.2f}]."
    )
    return out
