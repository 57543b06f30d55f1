"""Universe-trained vs TSLA-only on TSLA's test bars, tested over dates (market noise), not only over seeds.

Usage: ``python experiments/universe/tsla_dates.py <outputs/universe> [seeds]``; prints markdown. Re-walks TSLA's
test split with each universe run's selected checkpoint (the run's own per-ticker evaluation, repeated: the
figures must equal its report's TSLA row) and reads each TSLA-only run's ``trades_test.csv``; then, per seed and
for the seeds' average book, the Ledoit-Wolf paired Sharpe test on the same 377 bars (:mod:`src.evaluation.stats`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.app.restore import read_checkpoint, restore
from src.core.utils import build
from src.evaluation.stats import sharpe_difference_test
from src.evaluation.walk import evaluate_split, excess_series


def universe_tsla(run: Path):
    ckpt, cfg = read_checkpoint(json.loads((run / "run_info.json").read_text())["best_checkpoint"])
    universe = build(cfg.env)
    module = restore(ckpt, cfg, universe)
    tsla = next(m for m in universe.markets if m.name == "tsla")
    with torch.no_grad():
        return evaluate_split(tsla, "test", module.policy())["agent"]


def main() -> None:
    root = Path(sys.argv[1])
    seeds = [int(s) for s in (sys.argv[2].split() if len(sys.argv) > 2 else ["0", "1", "2", "3"])]
    rows, uni, alone = [], [], []
    for s in seeds:
        res = universe_tsla(root / f"universe_s{s}")
        u = res.ledger
        reported = json.loads((root / f"universe_s{s}" / "run_info.json").read_text())["universe"]["tickers"]["tsla"]
        a = pd.read_csv(root / f"tsla_s{s}" / "trades_test.csv", index_col="timestamp", parse_dates=True)
        assert list(u.index) == list(a.index), "the two arms' TSLA test bars differ"
        ru, ra = excess_series(u), excess_series(a)
        t = sharpe_difference_test(ru, ra, 252.0)
        rows.append(f"| {s} | {t['diff']:+.2f} | [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] | {t['p_value']:.3f} | "
                    f"{res.metrics['sharpe']:.3f} (report {reported['agent']['sharpe']:.3f}) |")  # fmt: skip
        uni.append(ru)
        alone.append(ra)
    t = sharpe_difference_test(np.mean(uni, 0), np.mean(alone, 0), 252.0)
    print("| seed | Sharpe(universe on TSLA) − Sharpe(TSLA-only), same bars | 95% interval (dates) | one-sided p |"
          " universe TSLA Sharpe re-walked |\n|---:|---:|---:|---:|---:|")  # fmt: skip
    print("\n".join(rows))
    print(f"| mean book of the {len(seeds)} seeds | {t['diff']:+.2f} | [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] | "
          f"{t['p_value']:.3f} | |")  # fmt: skip


if __name__ == "__main__":
    main()
