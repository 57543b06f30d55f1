"""Run outputs: metrics.json, report.md, trades_<split>.csv, equity.png and the console summary.

Files are written to a temporary name and renamed, so a killed run never
leaves a half-written report that looks finished.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from src.core.files import atomic_write, json_safe
from src.evaluation.walk import EvalResult

TABLE_METRICS = (
    ("total_return", "total return", "pct"),
    ("annual_return", "annual return", "pct"),
    ("annual_volatility", "annual vol", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("calmar", "Calmar", "num"),
    ("win_rate", "win rate", "pct"),
    ("profit_factor", "profit factor", "num"),
    ("trades", "trades", "int"),
    ("turnover", "turnover / yr", "num"),
    ("exposure", "exposure", "pct"),
)
NAMES = ("agent", "buy_and_hold", "max_long", "one_over_n", "flat")  # one_over_n: a portfolio's 1/N, monthly
LABELS = {"agent": "agent", "buy_and_hold": "buy and hold", "max_long": "max long within limits",
          "one_over_n": "1/N monthly", "flat": "flat"}  # fmt: skip


def fmt_value(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return {"pct": f"{100 * v:.2f}%", "num": f"{v:.3f}", "int": f"{int(v)}", "p": f"{v:.4f}"}[kind]


def metrics_table(results: dict[str, dict[str, EvalResult]]) -> str:
    """Markdown table: one row per metric, one column per (split, policy)."""
    cols = [(s, n) for s in results for n in NAMES if n in results[s]]
    head = "| metric | " + " | ".join(f"{s} {LABELS[n]}" for s, n in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for key, label, kind in TABLE_METRICS:
        lines.append(f"| {label} | " + " | ".join(fmt_value(results[s][n].metrics[key], kind) for s, n in cols) + " |")
    return "\n".join(lines)


def metrics_payload(results: dict[str, dict[str, EvalResult]]) -> dict:
    return json_safe({s: {n: r.metrics for n, r in res.items()} for s, res in results.items()})


def equity_figure(res: dict[str, EvalResult], title: str):
    """Equity of the agent, buy-and-hold and flat, with the drawdowns underneath."""
    fig, (ax, dd) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for name, style in (("agent", "-"), ("buy_and_hold", "--"), ("max_long", "-."), ("flat", ":")):
        if name not in res:
            continue
        eq = res[name].ledger["equity"]
        total = fmt_value(res[name].metrics["total_return"], "pct")
        ax.plot(eq.index, eq.to_numpy(), style, label=f"{LABELS[name]} ({total})")
        peak = np.maximum.accumulate(np.maximum(eq.to_numpy(), 1.0))
        dd.plot(eq.index, eq.to_numpy() / peak - 1, style)
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    dd.set_ylabel("drawdown")
    dd.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _bullets(d: dict, indent: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += [f"{indent}- {k}:", *_bullets(v, indent + "  ")]
        else:
            out.append(f"{indent}- {k}: {v}")
    return out


def significance_table(v: dict) -> str:
    """Markdown table of :func:`src.evaluation.verdict.verdict`'s per-split figures."""
    splits = [s for s in ("train", "val", "test") if s in v]
    pct = f"{100 * v['level']:.0f}%"
    rows = [
        ("sharpe", "Sharpe", "num"),
        ("buy_and_hold_sharpe", "buy-and-hold Sharpe", "num"),
        ("sharpe_minus_bh", "Sharpe minus buy-and-hold's (paired, same bars)", "num"),
        ("sharpe_minus_bh_ci_low", f"  {pct} interval, low (Ledoit-Wolf HAC)", "num"),
        ("sharpe_minus_bh_ci_high", f"  {pct} interval, high", "num"),
        ("p_value_vs_bh", "one-sided p-value: agent's Sharpe <= buy-and-hold's", "p"),
        ("psr_vs_zero", "PSR vs Sharpe 0", "num"),
        ("sharpe_ci_low", f"Sharpe {pct} interval, low (block bootstrap)", "num"),
        ("sharpe_ci_high", f"Sharpe {pct} interval, high", "num"),
        ("bootstrap_block", "bootstrap block (bars, Politis-White)", "int"),
        ("selected_from", "validation checks the checkpoint was selected from", "int"),
        ("expected_max_sharpe", "best of those checks by luck alone (expected)", "num"),
        ("deflated_sharpe_ratio", "deflated Sharpe ratio (selection among the checks)", "num"),
    ]
    lines = ["| | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for key, label, kind in rows:
        if any(key in v[s] for s in splits):
            lines.append(f"| {label} | " + " | ".join(fmt_value(v[s].get(key), kind) for s in splits) + " |")
    return "\n".join(lines)


def assumption_lines(data: dict) -> list[str]:
    """The market model behind every figure: fills, costs, financing, dividends, limits, annualisation."""
    c = data.get("costs")
    if not c:
        return []
    lo, hi = data.get("position_limits", [-1.0, 1.0])
    fill = {"open": "at the next bar's open", "close": "at the decision bar's close (optimistic)"}
    lines = [
        "## Assumptions",
        "",
        f"- fills {fill.get(data.get('fill'), data.get('fill'))}; position limits [{lo:g}, {hi:g}] of equity",
        f"- trading costs per unit traded: commission {c['commission_bps']:g} bp + half the {c['spread_bps']:g} bp "
        f"spread + slippage {c['slippage_bps']:g} bp = {1e4 * c['cost_per_unit_traded']:g} bp",
        f"- cash (short-sale proceeds included) earns {c['cash_rate_bps']:g} bp a year, the risk-free rate of every "
        "Sharpe ratio here (excess returns)",
        f"- shorts pay a borrow fee of {c['borrow_bps']:g} bp a year on their market value; borrowed cash "
        f"(weights above 1) pays {c['margin_rate_bps']:g} bp a year",
        "- financing accrues on the weight held overnight, over calendar time (ACT/365: a weekend is three days)",
        f"- dividends: {c['dividends']}",
        f"- annualisation: {data.get('bars_per_year', 0):g} bars a year ({data.get('bars_per_day', 1)} a trading day), "
        "from the file's own local calendar unless env.bars_per_year is set",
        "",
    ]
    return lines


def selection_lines(v: dict) -> list[str]:
    """The sentence on how the checkpoint was selected (empty when the verdict has no validation history)."""
    val = v.get("val", {})
    if "selected_from" not in val:
        return []
    n = val["selected_from"]
    return [
        f"The checkpoint was selected on validation from all {n} validation check{'s' * (n != 1)} of the run "
        f"(`val_history.csv`). By luck alone the best of them would reach a Sharpe of about "
        f"{val['expected_max_sharpe']:.3f}; the deflated Sharpe ratio of its validation Sharpe {val['sharpe']:.3f} "
        f"is {val['deflated_sharpe_ratio']:.3f}.",
        "",
    ]


def member_section(results: dict[str, dict[str, EvalResult]]) -> list[str]:
    """An ensemble's members, each acting alone, beside the ensemble (empty without members)."""
    splits = list(results)
    members = [n for n in results[splits[0]] if n.startswith("member_")]
    if not members:
        return []
    head = "| policy | " + " | ".join(f"{s} Sharpe | {s} return" for s in splits) + " |"
    lines = ["## Ensemble members", "", head, "|---|" + "---:|---:|" * len(splits)]
    for n in ["agent", *members]:
        cells = [
            f"{results[s][n].metrics['sharpe']:.3f} | {100 * results[s][n].metrics['total_return']:.2f}%"
            for s in splits
        ]
        lines.append(f"| {'ensemble' if n == 'agent' else n.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        "Each member acts alone on its own env, with the same costs; the ensemble acts with its aggregate.",
        "",
    ]


def report_head(title: str, command: str) -> list[str]:
    """A report's first lines: its title and the command that produced it."""
    return [f"# {title}", "", "Command:", "", "```", command, "```", ""]


def write_run_outputs(
    run_dir: Path,
    results: dict[str, dict[str, EvalResult]],
    command: str,
    info: dict,
    title: str,
    verdict: dict | None = None,
    sections: dict[str, list[str]] | None = None,
    *,
    baselines: str,
) -> str:
    """Write every report file of a run and return the summary table (and verdict) for the console.

    ``baselines`` says what the run's buy-and-hold is (its kind's, :data:`src.app.kinds.Kind.baselines`).

    ``sections`` maps a key of ``info`` to the markdown lines that report it (a callback's own section, e.g.
    the profitability target's adjustments); those keys are left out of the plain ``## Run`` list.
    """
    sections = sections or {}
    run_dir = Path(run_dir)
    for split, res in results.items():
        led = res["agent"].ledger.copy()
        led.insert(1, "buy_and_hold_equity", res["buy_and_hold"].ledger["equity"])
        led.insert(2, "buy_and_hold_net_return", res["buy_and_hold"].ledger["net_return"])
        led.insert(3, "buy_and_hold_dividend", res["buy_and_hold"].ledger["dividend"])
        atomic_write(run_dir / f"trades_{split}.csv", led.to_csv(index_label="timestamp", float_format="%.10g"))
    table = metrics_table(results)
    payload = metrics_payload(results)
    if verdict is not None:
        payload["verdict"] = json_safe(verdict)
    atomic_write(run_dir / "metrics.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    last = list(results)[-1]
    fig = equity_figure(results[last], f"{title}: {last} period")
    tmp = run_dir / "equity.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, run_dir / "equity.png")
    lines = [
        *report_head(title, command),
        table,
        "",
        "Costs are charged on every trade; buy-and-hold and flat run through the same env, costs, financing and "
        + f"dividends. {baselines}",
        "",
        *assumption_lines(info.get("data", {})),
    ]
    if verdict is not None:
        lines += [
            "## Verdict",
            "",
            verdict["sentence"],
            "",
            *selection_lines(verdict),
            significance_table(verdict),
            "",
            "The paired test (Ledoit & Wolf 2008) compares the agent's Sharpe with buy-and-hold's on the same bars: "
            "the standard error of the difference comes from the delta method with a HAC covariance (Bartlett "
            "kernel, Newey-West bandwidth), so both estimates' noise, their correlation, fat tails and "
            "autocorrelation count. PSR: probabilistic Sharpe ratio (Bailey & López de Prado 2012), the probability "
            "that the true Sharpe exceeds 0 given the sample's length, skewness and kurtosis. The Sharpe interval "
            f"comes from a circular block bootstrap (blocks of {verdict[verdict['judged_split']]['bootstrap_block']} "
            "bars, Politis & White's length, never under a day of bars). The deflated Sharpe ratio (Bailey & "
            "López de Prado 2014) discounts the validation Sharpe for having been the best of every validation "
            "check: it is the PSR against the Sharpe the best of those checks would reach by luck.",
            "",
        ]
        table = f"{table}\n\n{verdict['sentence']}"
    for block in sections.values():
        lines += block
    lines += member_section(results)
    lines += ["## Run", ""]
    lines += _bullets({k: v for k, v in info.items() if k not in sections})
    atomic_write(run_dir / "report.md", "\n".join(lines) + "\n")
    return table
