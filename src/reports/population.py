"""A population run's verdict and report: every member as a run of its own, then the population as a whole.

Each member was selected on validation and tested once, like a run of its own (:mod:`src.training.population`), and
gets its own verdict (:func:`src.evaluation.verdict.verdict`: the paired test of its test Sharpe against
buy-and-hold's).
The population adds:

- the members' test Sharpe: mean, std and the Student-t interval of the mean
  (:func:`src.evaluation.stats.mean_interval`).
  It measures how much *training* randomness moves the result on this one test period; it is not an interval
  for the market (every member is judged on the same bars, so their results share that period's luck);
- how many members beat buy-and-hold: at the nominal level one by one, and after Holm's correction for K tests
  (:func:`src.evaluation.stats.holm`, valid however the members' tests are correlated), which is what "the
  population beat buy-and-hold" means here: at least one member does after the correction.
"""

from __future__ import annotations

import json
from pathlib import Path

from src.core.files import atomic_write, json_safe
from src.evaluation.stats import holm, mean_interval
from src.evaluation.verdict import verdict
from src.evaluation.walk import EvalResult
from src.reports.run import assumption_lines, fmt_value, metrics_payload, report_head


def population_verdict(judged: list[dict], level: float = 0.95) -> dict:
    """The population's summary from its members' verdicts (:func:`src.evaluation.verdict.verdict` of each)."""
    split = judged[0]["judged_split"]
    t = [j[split] for j in judged]
    sharpes = [r["sharpe"] for r in t]
    p = [r["p_value_vs_bh"] for r in t]
    adjusted = holm(p)
    alpha = 1 - level
    summary = mean_interval(sharpes, level)
    beat = sum(bool(x <= alpha) for x in p)
    winners = [k for k, x in enumerate(adjusted) if x <= alpha]
    beat_holm = len(winners)
    bh = t[0]["buy_and_hold_sharpe"]
    pct = f"{100 * level:.0f}%"
    sentence = (
        f"{len(t)} members on the {split} period ({t[0]['first'][:10]} to {t[0]['last'][:10]}, {t[0]['bars']} bars): "
        f"test Sharpe {summary['mean']:.2f} +- {summary['std']:.2f} (mean +- std; {pct} interval of the mean "
        f"[{summary['low']:.2f}, {summary['high']:.2f}]) against buy-and-hold's {bh:.2f}; {beat} of {len(t)} "
        f"beat buy-and-hold at the {pct} level one by one, {beat_holm} after Holm's correction for {len(t)} tests"
        + (
            f" (member{'s' * (beat_holm > 1)} {', '.join(map(str, winners))}): at least one seed of this configuration "
            "beat buy-and-hold on this period."
            if beat_holm
            else ": no member beat buy-and-hold."
        )
    )
    return {
        "split": split,
        "level": level,
        "members": len(t),
        "test_sharpe": summary,
        "buy_and_hold_sharpe": bh,
        "beat_buy_and_hold": beat,
        "beat_buy_and_hold_holm": beat_holm,
        "p_values_vs_bh": p,
        "p_values_vs_bh_holm": adjusted,
        "sentence": sentence,
    }


def member_table(seeds: list[int], steps: list[int], judged: list[dict], adjusted: list[float]) -> str:
    cols = ("member", "seed", "selected at step", "val Sharpe", "test Sharpe", "test return", "test max DD")
    head = "| " + " | ".join((*cols, "p vs B&H", "Holm p")) + " |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, (s, j) in enumerate(zip(seeds, judged, strict=True)):
        v, t = j["val"], j["test"]
        lines.append(
            f"| {k} | {s} | {steps[k]} | {fmt_value(v['sharpe'], 'num')} | {fmt_value(t['sharpe'], 'num')} | "
            f"{fmt_value(t.get('total_return'), 'pct')} | {fmt_value(t.get('max_drawdown'), 'pct')} | "
            f"{fmt_value(t['p_value_vs_bh'], 'p')} | {fmt_value(adjusted[k], 'p')} |"
        )
    return "\n".join(lines)


def write_population_outputs(
    run_dir: Path,
    per_member: list[dict[str, dict[str, EvalResult]]],
    seeds: list[int],
    selected_steps: list[int],
    val_history: list[list[float]],
    info: dict,
    bars_per_year: float,
    bars_per_day: int,
    title: str,
) -> str:
    """metrics.json, report.md and each member's test ledger; returns the console summary."""
    judged = []
    for k, res in enumerate(per_member):
        j = verdict(res, bars_per_year, [h[k] for h in val_history], bars_per_day=bars_per_day)
        for split in ("val", "test"):
            j[split].update({m: res[split]["agent"].metrics[m] for m in ("total_return", "max_drawdown")})
        judged.append(j)
    pop = population_verdict(judged)
    payload = {
        "population": pop,
        "members": [
            {"seed": s, "selected_at_step": st, **metrics_payload(res), "verdict": j}
            for s, st, res, j in zip(seeds, selected_steps, per_member, judged, strict=True)
        ],
    }
    run_dir = Path(run_dir)
    for k, res in enumerate(per_member):
        led = res["test"]["agent"].ledger
        atomic_write(run_dir / f"trades_test_member_{k}.csv", led.to_csv(index_label="timestamp", float_format="%.10g"))
    atomic_write(run_dir / "metrics.json", json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")
    table = member_table(seeds, selected_steps, judged, pop["p_values_vs_bh_holm"])
    bh = per_member[0]["test"]["buy_and_hold"].metrics
    lines = [
        *report_head(title, info["command"]),
        "Each member is an independent agent (its own seed, initialisation, episodes, optimizer state and gradient "
        "clipping), selected on its own validation Sharpe and tested once, as its own run would be"
        + (
            f" -- except that this run had {info['numerical_faults']} numerical fault(s), and a fault in any member "
            "skips that step for every member."
            if info.get("numerical_faults")
            else "."
        ),
        "",
        table,
        "",
        f"Buy-and-hold on the test period: Sharpe {fmt_value(bh['sharpe'], 'num')}, return "
        f"{fmt_value(bh['total_return'], 'pct')}, max drawdown {fmt_value(bh['max_drawdown'], 'pct')}.",
        "",
        "## Verdict",
        "",
        pop["sentence"],
        "",
        "The interval is over members: it says how much training randomness moves the test Sharpe on this one "
        "period, not how the market could have gone (all members face the same bars): an interval of the mean above "
        "buy-and-hold's Sharpe says other seeds would land there too on these bars, not that the configuration beats "
        "holding the asset in another period. Each member's p-value is the "
        "one-sided paired test of its Sharpe against buy-and-hold's on the same bars (Ledoit & Wolf 2008); Holm's "
        "correction keeps the chance of any false 'beat' at 5% across the members, whatever their correlation.",
        "",
        *assumption_lines(info.get("data", {})),
    ]
    if "oracle" in info:
        o = info["oracle"]
        lines += ["## Oracle", "", f"The oracle of this planted market earns, after the same costs: Sharpe "
                  f"{o['val_sharpe']:.2f} on validation, {o['test_sharpe']:.2f} on test.", ""]  # fmt: skip
    atomic_write(run_dir / "report.md", "\n".join(lines) + "\n")
    return f"{table}\n\n{pop['sentence']}"
