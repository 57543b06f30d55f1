"""A universe's evaluation: every ticker's own ledgers, the pooled book, and the pooled verdict.

Each ticker's split is walked by its own env (:func:`src.evaluation.walk.evaluate_split`): the agent and the baselines
after that ticker's costs. The **pooled book** gives each ticker's agent (and each baseline) 1/K of the capital at
the start of the split and never moves money between them: its equity is the mean of the tickers' equity curves,
a book one could hold with no cost beyond the tickers' own, and its Sharpe is what validation selects on. It is
measured on the dates every ticker has. The **pooled verdict** asks whether the agent beats buy-and-hold across
the tickers: the mean over tickers of the paired Sharpe difference, with its tickers' correlation counted
(:func:`src.evaluation.panel.panel_sharpe_difference_test`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.evaluation.panel import panel_sharpe_difference_test
from src.evaluation.stats import holm, sharpe_difference_test
from src.evaluation.walk import COLUMNS, EvalResult, excess_series, ledger_metrics

__all__ = ["common_dates", "on_dates", "pooled_book", "pooled_results", "pooled_verdict", "universe_section"]


def common_dates(ledgers: list[pd.DataFrame]) -> pd.DatetimeIndex:
    """The dates every ledger has, in order."""
    idx = ledgers[0].index
    for df in ledgers[1:]:
        idx = idx.intersection(df.index)
    return idx.sort_values()


def pooled_book(ledgers: list[pd.DataFrame]) -> pd.DataFrame:
    """The ledger of 1/K of the capital in each of K books from the first common date on, never rebalanced.

    Per bar: the book's equity is the mean of the tickers' (each 1 before the first common date), its return
    the tickers' returns weighted by their equity at the start of the bar, and so are its position, turnover,
    cost, income and price return; ``price`` is the equal-weight index of the tickers' prices (1 at the start).
    A date one ticker lacks is skipped, its growth counted on the next common date.
    """
    dates = common_dates(ledgers)
    if len(dates) < 2:
        raise ValueError("the tickers' ledgers share fewer than 2 dates: nothing to pool")
    parts = [df.loc[dates] for df in ledgers]
    # each book's growth from one common date to the next (over any date another ticker lacks, too), compounded
    # in float64 from its returns (the float32 equity column's rounding would swamp a nearly flat book's returns);
    # each book is 1 before the first common date
    equity = np.stack([np.cumprod(1 + on_dates(df, dates)["net_return"].to_numpy()) for df in ledgers], 1)
    before = np.vstack([np.ones((1, len(parts))), equity[:-1]])  # each book's equity at the start of the bar
    w = before / before.sum(1, keepdims=True)
    out = {k: (np.stack([p[k].to_numpy() for p in parts], 1) * w).sum(1) for k in COLUMNS[1:-1]}
    out["equity"] = equity.mean(1)
    out["net_return"] = out["equity"] / np.concatenate([[1.0], out["equity"][:-1]]) - 1
    price = np.stack([(p["price"] / p["price"].iloc[0]).to_numpy() for p in parts], 1)
    out["price"] = price.mean(1)
    return pd.DataFrame(out, index=dates)[list(COLUMNS)]


def pooled_results(per_ticker: dict[str, dict[str, EvalResult]], bars_per_year: float) -> dict[str, EvalResult]:
    """For every policy evaluated on every ticker (agent, buy_and_hold, flat, ...): its pooled book's result."""
    tickers = list(per_ticker)
    names = [n for n in per_ticker[tickers[0]] if all(n in per_ticker[t] for t in tickers)]
    split = per_ticker[tickers[0]][names[0]].split
    out = {}
    for name in names:
        book = pooled_book([per_ticker[t][name].ledger for t in tickers])
        out[name] = EvalResult(split, book, ledger_metrics(book, bars_per_year))
    return out


def on_dates(ledger: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """``net_return`` and ``risk_free`` from one of ``dates`` to the next, compounded over any date between them
    that the ledger has and another lacks (so no return is dropped), in float64."""
    out = {}
    for k in ("net_return", "risk_free"):
        level = pd.Series(np.cumprod(1 + ledger[k].to_numpy(np.float64)), ledger.index).loc[dates].to_numpy()
        start = level[0] / (1 + float(ledger[k].loc[dates[0]]))
        out[k] = level / np.concatenate([[start], level[:-1]]) - 1
    return pd.DataFrame(out, index=dates)


def pooled_verdict(per_ticker: dict[str, dict[str, EvalResult]], bars_per_year: float) -> dict[str, float]:
    """The agent against buy-and-hold across the tickers, on their common dates (excess of cash; a date one
    ticker lacks is compounded into the next common date, as the pooled book does)."""
    tickers = list(per_ticker)
    dates = common_dates([per_ticker[t]["agent"].ledger for t in tickers])

    def panel(name: str) -> np.ndarray:
        return np.stack([excess_series(on_dates(per_ticker[t][name].ledger, dates)) for t in tickers], 1)

    r = panel_sharpe_difference_test(panel("agent"), panel("buy_and_hold"), bars_per_year)
    return {"tickers": len(tickers), "dates": len(dates), **r}


def universe_section(per_ticker: dict[str, dict[str, EvalResult]], bars_per_year: float) -> tuple[dict, list[str]]:
    """The report's per-ticker table of one split (the agent against buy-and-hold on each ticker, paired test and
    Holm over the tickers) and the pooled verdict; and the same as a dict for run_info.json / metrics."""
    rows, p = {}, []
    for t, res in per_ticker.items():
        a, b = res["agent"], res["buy_and_hold"]
        test = sharpe_difference_test(excess_series(a.ledger), excess_series(b.ledger), bars_per_year)
        p.append(test["p_value"])
        rows[t] = {"agent": a.metrics, "buy_and_hold": b.metrics, "p_value_vs_bh": test["p_value"]}
    for r, q in zip(rows.values(), holm(p), strict=True):
        r["p_holm"] = q
    v = pooled_verdict(per_ticker, bars_per_year)
    split = next(iter(per_ticker.values()))["agent"].split
    lines = [f"## Tickers ({split} period)", "",
             "| ticker | agent Sharpe | buy-and-hold Sharpe | agent return | buy-and-hold return | agent max drawdown "
             "| p vs B&H | p (Holm) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for t, r in rows.items():
        a, b = r["agent"], r["buy_and_hold"]
        lines.append(f"| {t} | {a['sharpe']:.2f} | {b['sharpe']:.2f} | {a['total_return']:.1%} | "
                     f"{b['total_return']:.1%} | {a['max_drawdown']:.1%} | {r['p_value_vs_bh']:.3f} | "
                     f"{r['p_holm']:.3f} |")  # fmt: skip
    better = "beats" if v["p_value"] <= 0.05 else "does not beat"
    lines += ["", f"**Pooled verdict**: across the {v['tickers']} tickers on their {v['dates']} common dates the agent "
              f"{better} buy-and-hold (one-sided test at 5%: p = {v['p_value']:.3f}): mean Sharpe difference "
              f"{v['diff']:+.2f}, two-sided 95% interval [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]. The tickers' "
              "results move together, so the interval counts their correlation date by date "
              "(src/evaluation/panel.py); the per-ticker p-values are each ticker's paired test, Holm-corrected "
              "over the tickers.", ""]  # fmt: skip
    return {"tickers": rows, "pooled_verdict": v}, lines
