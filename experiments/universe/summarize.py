"""Tables of experiments/universe/results.md from the runs of experiments/universe/run.sh.

Usage: ``python experiments/universe/summarize.py <outputs/universe> [seeds]``; prints markdown. Reads only what
the runs wrote (``metrics.json``, ``run_info.json``); the intervals are over seeds (:mod:`src.evaluation.stats`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from src.evaluation.stats import holm, mean_interval, paired_difference


def load(run: Path) -> tuple[dict, dict]:
    return json.loads((run / "metrics.json").read_text()), json.loads((run / "run_info.json").read_text())


def fmt_diff(d: dict) -> str:
    return (f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (p = {d['p_value']:.3f}; detectable with 80% "
            f"power: {d['detectable']:.2f})")  # fmt: skip


def tsla_section(root: Path, seeds: list[int]) -> list[str]:
    rows, alone, inside = [], [], []
    for s in seeds:
        m, _ = load(root / f"tsla_s{s}")
        _, info = load(root / f"universe_s{s}")
        t = info["universe"]["tickers"]["tsla"]
        alone.append(m["test"]["agent"]["sharpe"])
        inside.append(t["agent"]["sharpe"])
        rows.append(f"| {s} | {alone[-1]:.2f} | {inside[-1]:.2f} | {inside[-1] - alone[-1]:+.2f} | "
                    f"{m['test']['buy_and_hold']['sharpe']:.2f} | {t['buy_and_hold']['sharpe']:.2f} |")  # fmt: skip
    d = paired_difference(inside, alone)
    return [
        "| seed | TSLA-only agent | universe agent on TSLA | difference | TSLA buy-and-hold (TSLA-only run) | "
        "TSLA buy-and-hold (universe run) |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Universe − TSLA-only, test Sharpe on TSLA, mean over {len(seeds)} paired seeds: {fmt_diff(d)}.",
    ]


def universe_section(root: Path, seeds: list[int]) -> list[str]:
    per: dict[str, dict[str, list[float]]] = {}
    verdicts, books = [], []
    for s in seeds:
        m, info = load(root / f"universe_s{s}")
        books.append((m["test"]["agent"]["sharpe"], m["test"]["buy_and_hold"]["sharpe"]))
        for tk, r in info["universe"]["tickers"].items():
            cell = per.setdefault(tk, {"agent": [], "bh": [], "p": []})
            cell["agent"].append(r["agent"]["sharpe"])
            cell["bh"].append(r["buy_and_hold"]["sharpe"])
            cell["p"].append(r["p_holm"])
        verdicts.append(info["universe"]["pooled_verdict"])
    lines = ["| ticker | agent test Sharpe (mean over seeds [95% interval]) | buy-and-hold | agent − B&H | "
             "seeds with Holm p < 0.05 |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for tk, c in per.items():
        a = mean_interval(c["agent"])
        diff = mean_interval([x - y for x, y in zip(c["agent"], c["bh"], strict=True)])
        hits = sum(p < 0.05 for p in c["p"])
        cells = (f"{a['mean']:.2f} [{a['low']:.2f}, {a['high']:.2f}]", f"{c['bh'][0]:.2f}",
                 f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]", f"{hits}/{len(seeds)}")  # fmt: skip
        lines.append(f"| {tk} | " + " | ".join(cells) + " |")
    lines += ["", "Pooled verdict of each seed's run (mean over tickers of the paired Sharpe difference against "
              "buy-and-hold, correlation across tickers counted; one-sided p, Holm over the seeds):", "",
              "| seed | mean difference | 95% interval | one-sided p | Holm over seeds | pooled book Sharpe: agent "
              "| pooled buy-and-hold |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s, v, q, b in zip(seeds, verdicts, holm([v["p_value"] for v in verdicts]), books, strict=True):
        lines.append(f"| {s} | {v['diff']:+.2f} | [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}] | {v['p_value']:.3f} | "
                     f"{q:.3f} | {b[0]:.2f} | {b[1]:.2f} |")  # fmt: skip
    return lines


def portfolio_section(root: Path, seeds: list[int]) -> list[str]:
    rows, agent, one_n = [], [], []
    for s in seeds:
        m, info = load(root / f"portfolio_s{s}")
        p = info["portfolio"]
        agent.append(m["test"]["agent"]["sharpe"])
        one_n.append(m["test"]["one_over_n"]["sharpe"])
        w = p["mean_weights"]
        top = max(w, key=w.get)
        rows.append(f"| {s} | {agent[-1]:.2f} | {one_n[-1]:.2f} | {m['test']['buy_and_hold']['sharpe']:.2f} | "
                    f"{p['sharpe_minus_one_over_n']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] | "
                    f"{p['p_value']:.3f} | {1 - sum(w.values()):.2f} | {top} {w[top]:.2f} | "
                    f"{m['test']['agent']['turnover']:.2f} |")  # fmt: skip
    d = paired_difference(agent, one_n)
    return [
        "| seed | agent test Sharpe | 1/N monthly | equal-weight B&H | agent − 1/N (95% interval, this run's bars) | "
        "p | mean cash | largest mean weight | agent turnover / yr |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Agent − 1/N, test Sharpe, mean over {len(seeds)} seeds: {fmt_diff(d)}.",
    ]


def main() -> None:
    root = Path(sys.argv[1])
    seeds = [int(s) for s in (sys.argv[2].split() if len(sys.argv) > 2 else ["0", "1", "2", "3"])]
    for title, fn in (("TSLA", tsla_section), ("Universe", universe_section), ("Portfolio", portfolio_section)):
        print(f"## {title}\n")
        print("\n".join(fn(root, seeds)) + "\n")


if __name__ == "__main__":
    main()
