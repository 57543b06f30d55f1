"""A universe's evaluation: every ticker's own ledgers, the pooled book, and the pooled verdict.

Each ticker's split is walked by its own env (:func:`src.evaluation.evaluate_split`): the agent and the baselines
after that ticker's costs. The **pooled book** gives each ticker's agent (and each baseline) 1/K of the capital at
the start of the split and never moves money between them: its equity is the mean of the tickers' equity curves,
a book one could hold with no cost beyond the tickers' own, and its Sharpe is what validation selects on. It is
measured on the dates every ticker has. The **pooled verdict** asks whether the agent beats buy-and-hold across
the tickers: the mean over tickers of the paired Sharpe difference, with its tickers' correlation counted
(:func:`src.stats_panel.panel_sharpe_difference_test`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.evaluation import COLUMNS, EvalResult, excess_series, ledger_metrics
from src.stats_panel import panel_sharpe_difference_test

__all__ = ["common_dates", "pooled_book", "pooled_results", "pooled_verdict"]


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
    # each book's growth from one common date to the next (over any date another ticker lacks, too)
    level = np.stack([p["equity"].to_numpy() for p in parts], 1)  # (T, K) equity since the split's start
    start = level[0] / np.stack([(1 + p["net_return"].iloc[0]) for p in parts])  # before the first common date
    equity = level / start
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


def pooled_verdict(per_ticker: dict[str, dict[str, EvalResult]], bars_per_year: float) -> dict[str, float]:
    """The agent against buy-and-hold across the tickers, on their common dates (excess of cash)."""
    tickers = list(per_ticker)
    dates = common_dates([per_ticker[t]["agent"].ledger for t in tickers])

    def panel(name: str) -> np.ndarray:
        return np.stack([excess_series(per_ticker[t][name].ledger.loc[dates]) for t in tickers], 1)

    r = panel_sharpe_difference_test(panel("agent"), panel("buy_and_hold"), bars_per_year)
    return {"tickers": len(tickers), "dates": len(dates), **r}
