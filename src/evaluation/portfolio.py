"""Deterministic evaluation of a portfolio over a whole split, beside its baselines, through one env.

The agent and every baseline walk the split in one batched :class:`PortfolioEnv`, so they pay the same costs,
financing and dividends on their turnover and holdings:

- ``buy_and_hold``: equal weights bought on the first decision and left to drift (equal-weight buy-and-hold);
- ``one_over_n``: equal weights, rebalanced to 1/N once a month: decided at the close of the month's first bar,
  filled at the next open (DeMiguel et al., 2009: the benchmark most optimised allocations fail to beat out of
  sample);
- ``flat``: all cash;
- ``hold_<ticker>``: each asset alone at weight 1; the report names the best of them on the split *in
  hindsight* (``best_single_in_hindsight``): not a fair baseline (it is chosen by the very period it is judged
  on), shown for scale.

Baselines are not bound by the agent's limits. An episode that goes bankrupt stays in cash for the rest of the
split. Every ledger has the single-asset ledger's columns (``position``: the sum of the absolute weights after
the fill, the gross exposure; ``price``: the equal-weight index of the assets' closes, 1 at the split's first
decision bar) and one weight column per asset, ``w_<ticker>``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from src.data.portfolio import PortfolioMarket
from src.envs.portfolio_env import PortfolioEnv
from src.evaluation.stats import sharpe_difference_test
from src.evaluation.walk import COLUMNS, EvalResult, excess_series, ledger_metrics, walk

KEYS = ("t", "exposure", "turnover", "cost", "gross_return", "dividend", "financing", "net_return", "risk_free")


def baseline_names(pm: PortfolioMarket) -> list[str]:
    return ["buy_and_hold", "one_over_n", "flat", *(f"hold_{t}" for t in pm.tickers)]


def month_starts(pm: PortfolioMarket) -> torch.Tensor:
    """(T,) bool: bar t is the first of its calendar month, which is known at bar t (a 1/N rebalance is decided
    at its close and filled at the next open: the month's second trading day)."""
    months = pm.dates.year * 12 + pm.dates.month
    out = np.insert(months[1:] != months[:-1], 0, False)
    return torch.as_tensor(out, device=pm.device)


class PortfolioBook:
    """A portfolio for :func:`~src.evaluation.walk.walk`: the agent's simplex point and the baselines' weight
    vectors, each baseline trading on its calendar (its first bar; 1/N also the month's first bars) and holding
    its drifted weights in between."""

    keys = (*KEYS, "equity", "position")

    def __init__(self, pm: PortfolioMarket, split: str, policy=None, values: list | None = None) -> None:
        self.pm, self.values = pm, values
        self.names = (["agent"] if policy is not None else []) + baseline_names(pm)
        n, k, dev = len(self.names), pm.num_assets, pm.device
        self.env = PortfolioEnv(pm, split, n, random_start=False, auto_reset=False)
        self.free = torch.tensor([nm != "agent" for nm in self.names], device=dev)
        ew = torch.full((k,), 1.0 / k, device=dev)
        self.fixed = torch.stack([ew, ew, torch.zeros(k, device=dev), *torch.eye(k, device=dev)])  # first targets
        self.rebalance = month_starts(pm)
        self.a0 = n - len(self.fixed)  # the baselines' first env (after the agent's)
        self.hold = torch.zeros(n, dtype=torch.bool, device=dev)

    def targets(self, step: int, obs, policy) -> torch.Tensor:
        target = self.fixed.clone()  # the baselines' targets when they trade: the first bar, and 1/N's month ends
        if step > 0:
            self.hold[self.a0 :] = True  # ... else they keep their drifted weights
            self.hold[self.a0 + 1] = not bool(self.rebalance[self.env.t[0]])  # one_over_n
        if policy is None:
            return target
        action, v = policy(type(obs)(obs.market[:1], obs.position[:1]))
        if self.values is not None:
            self.values.append(v.reshape(()))
        return torch.cat([self.env.to_weights(action.reshape(1, -1)), target])

    def advance(self, target: torch.Tensor, alive: torch.Tensor) -> tuple:
        return self.env.step_weights(target * alive[:, None], bound=~self.free, hold=self.hold & alive)

    def ledgers(self, cols: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
        pm, t = self.pm, cols.pop("t")[:, 0]
        weights = cols.pop("position")  # (steps, n, k)
        price = (pm.close[t] / pm.close[self.env.first]).mean(1)
        out = {}
        for j, name in enumerate(self.names):
            df = pd.DataFrame({key: v[:, j] for key, v in cols.items()}, index=pm.dates[t])
            df = df.rename(columns={"exposure": "position"})
            df.insert(0, "price", price)
            df = df[list(COLUMNS)]
            for a, ticker in enumerate(pm.tickers):
                df[f"w_{ticker}"] = weights[:, j, a]
            out[name] = df
        return out


def run_portfolio(pm: PortfolioMarket, split: str, policy=None, values: list | None = None) -> dict[str, pd.DataFrame]:
    """Walk ``split`` once with the agent (``policy``: Obs -> ``(simplex point, value)``, deterministic) and the
    baselines; ``values``: the critic's value of each of the agent's observations is appended there. Returns one
    ledger per name."""
    return walk(PortfolioBook(pm, split, policy, values), policy)


def evaluate_portfolio(pm: PortfolioMarket, split: str, policy=None, values: list | None = None):
    """``(results, holds)``: the agent's and the main baselines' :class:`EvalResult` (``agent``,
    ``buy_and_hold``, ``one_over_n``, ``flat``, ``best_single_in_hindsight``), and every asset held alone."""
    ledgers = run_portfolio(pm, split, policy, values)
    res = {nm: EvalResult(split, df, ledger_metrics(df, pm.bars_per_year)) for nm, df in ledgers.items()}
    holds = {nm[5:]: res.pop(nm) for nm in list(res) if nm.startswith("hold_")}
    best = max(holds, key=lambda tk: holds[tk].metrics["total_return"])
    res["best_single_in_hindsight"] = holds[best]
    return res, holds


def portfolio_section(res: dict[str, EvalResult], holds: dict[str, EvalResult], bars_per_year: float):
    """``(summary, lines)``: the agent against 1/N (the paired Sharpe test), the baselines and every asset."""
    agent, one_n = excess_series(res["agent"].ledger), excess_series(res["one_over_n"].ledger)
    paired = sharpe_difference_test(agent, one_n, bars_per_year)
    best = max(holds, key=lambda tk: holds[tk].metrics["total_return"])
    led = res["agent"].ledger
    summary = {
        "sharpe_minus_one_over_n": paired["diff"], "ci_low": paired["ci_low"], "ci_high": paired["ci_high"],
        "p_value": paired["p_value"], "best_single_in_hindsight": best,
        "mean_weights": {tk: float(led[f"w_{tk}"].mean()) for tk in holds},
    }  # fmt: skip
    lines = [
        "## Portfolio: the agent against 1/N and the assets",
        "",
        f"Sharpe(agent) − Sharpe(1/N monthly) = {paired['diff']:+.2f}, 95% interval "
        f"[{paired['ci_low']:+.2f}, {paired['ci_high']:+.2f}] (two-sided); one-sided p = {paired['p_value']:.3f} for "
        "H0: Sharpe(agent) <= Sharpe(1/N) (Ledoit-Wolf HAC paired test on excess returns).",
        "",
        "| book | Sharpe | total return | max drawdown | turnover |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "agent": "agent",
        "buy_and_hold": "equal-weight buy-and-hold",
        "one_over_n": "1/N, monthly",
        "flat": "flat (cash)",
        "best_single_in_hindsight": f"best single asset in hindsight ({best}; not a fair baseline)",
    }
    for nm, label in labels.items():
        m = res[nm].metrics
        lines.append(f"| {label} | {m['sharpe']:.2f} | {m['total_return']:+.1%} | {m['max_drawdown']:.1%} | "
                     f"{m['turnover']:.3f} |")  # fmt: skip
    lines += ["", "| asset | agent's mean weight | held alone: Sharpe | total return |", "|---|---|---|---|"]
    for tk, r in holds.items():
        lines.append(f"| {tk} | {summary['mean_weights'][tk]:.3f} | {r.metrics['sharpe']:.2f} | "
                     f"{r.metrics['total_return']:+.1%} |")  # fmt: skip
    return summary, [*lines, ""]
