"""Aggregate run directories into a markdown table: mean ± std over seeds of each policy's metrics.

Usage: ``python experiments/summarize.py outputs/multirun/<date_time>`` (any folder holding run
directories with ``metrics.json``). Reads only what the runs wrote; computes nothing new but the mean,
the sample std and the count.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# key, label, format of mean and std
COLUMNS = (
    ("total_return", "total return", "{:+.2%}", "{:.2%}"),
    ("sharpe", "Sharpe", "{:.3f}", "{:.3f}"),
    ("max_drawdown", "max drawdown", "{:.2%}", "{:.2%}"),
    ("exposure", "exposure", "{:.1%}", "{:.1%}"),
    ("trades", "trades", "{:.0f}", "{:.0f}"),
)


def _cell(values: list[float], fmt_mean: str, fmt_sd: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt_mean.format(statistics.fmean(values))} ± {fmt_sd.format(sd)}"


def summarize(root: Path) -> str:
    runs = sorted(p.parent for p in root.rglob("metrics.json"))
    if not runs:
        raise SystemExit(f"error: no metrics.json under {root}")
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    lines = [
        f"{len(runs)} runs: " + ", ".join(r.name for r in runs),
        "",
        "| split | policy | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for split in ("val", "test"):
        for name in ("agent", "buy_and_hold", "flat"):
            cells = [_cell([m[split][name][k] for m in metrics], fm, fs) for k, _, fm, fs in COLUMNS]
            lines.append(f"| {split} | {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", "| run | val Sharpe | test Sharpe | test return |", "|---|---:|---:|---:|"]
    for r, m in zip(runs, metrics, strict=True):
        a_val, a_test = m["val"]["agent"], m["test"]["agent"]
        lines.append(
            f"| {r.name} | {a_val['sharpe']:.3f} | {a_test['sharpe']:.3f} | {100 * a_test['total_return']:+.2f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/summarize.py <folder of runs>")
    print(summarize(Path(sys.argv[1])))
