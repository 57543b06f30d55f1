"""Deterministic evaluation over a whole split, for the agent and the baselines.

The agent, buy-and-hold (weight 1 from the first bar) and flat (weight 0) run
through the *same* env, with the same costs, fills, financing and dividends, so
the comparison is like for like. Buy-and-hold is always 100% long the asset,
whatever the agent's ``env.position_limits``; when the agent cannot hold that
much, ``max_long`` (its largest long weight, held throughout) is evaluated too
and labelled as such. An episode that goes bankrupt stays flat for the rest of
the split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from src.data.market import Market
from src.envs.market_env import MarketEnv, Obs
from src.evaluation.metrics import compute_metrics, excess_returns

Policy = Callable[[Obs], torch.Tensor]
COLUMNS = (
    "price", "position", "turnover", "cost", "gross_return", "dividend", "financing", "net_return", "risk_free",
    "equity",
)  # fmt: skip


def baselines(market: Market) -> dict[str, float]:
    """The fixed weights evaluated beside the agent: buy-and-hold, flat and, when the agent's largest long
    weight is between 0 and 1, that weight (``max_long``: the most of buy-and-hold the agent could hold)."""
    hi = market.position_limits[1]
    return {"buy_and_hold": 1.0, **({"max_long": hi} if 0 < hi < 1 else {}), "flat": 0.0}


@dataclass
class EvalResult:
    """Per-bar ledger of one split and its metrics."""

    split: str
    ledger: pd.DataFrame  # index timestamp; columns COLUMNS
    metrics: dict[str, float]


class Book(Protocol):
    """What one kind of market supplies to :func:`walk`: the env every policy walks together (the agents' envs
    first, then the baselines'), the targets of each step, how a step is taken, and the ledgers."""

    env: Any
    names: list[str]
    keys: tuple[str, ...]  # the env's info entries every ledger records

    def targets(self, step: int, obs: Obs, policy: Policy | None) -> torch.Tensor: ...

    def advance(self, target: torch.Tensor, alive: torch.Tensor) -> tuple: ...

    def ledgers(self, cols: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]: ...


@torch.no_grad()
def walk(book: Book, policy: Policy | None) -> dict[str, pd.DataFrame]:
    """Walk a split once with the agent (if given) and the baselines in one batched env: the one evaluation walk
    of every book (a single asset here; a portfolio in :mod:`src.evaluation.portfolio`). A policy that goes
    bankrupt stays out of the market for the rest of the split. Returns one ledger per name."""
    env = book.env
    obs = env.reset()
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in book.keys}
    alive = None
    for step in range(env.max_len):
        target = book.targets(step, obs, policy)
        alive = torch.ones(len(book.names), dtype=torch.bool, device=target.device) if alive is None else alive
        obs, reward, terminated, truncated, info = book.advance(target, alive)
        if policy is not None and hasattr(policy, "after_step"):  # stateful policies (goal-conditioned)
            policy.after_step(reward[:1], (terminated | truncated)[:1])
        for k in rows:
            rows[k].append(info[k])
        alive &= ~terminated
    return book.ledgers({k: torch.stack(v).cpu().numpy() for k, v in rows.items()})  # (steps, n_policies, ...)


class AssetBook:
    """One asset: the agent's target weight and the fixed weights of :func:`baselines`, which hold their weight
    whatever the agent's limits."""

    keys = ("t", "position", "turnover", "cost", "gross_return", "dividend", "financing", "net_return", "risk_free",
            "equity")  # fmt: skip

    def __init__(self, market: Market, split: str, policy: Policy | None) -> None:
        agents = list(getattr(policy, "names", ["agent"])) if policy is not None else []
        fixed = baselines(market)
        self.market, self.n_agents, self.names = market, len(agents), agents + list(fixed)
        self.fixed = torch.tensor(list(fixed.values()), device=market.device)
        lo, hi, inf = *market.position_limits, float("inf")
        lows = torch.tensor([lo] * self.n_agents + [-inf] * len(fixed), device=market.device)
        highs = torch.tensor([hi] * self.n_agents + [inf] * len(fixed), device=market.device)
        self.env = MarketEnv(market, split, num_envs=len(self.names), random_start=False, limits=(lows, highs))

    def targets(self, step: int, obs: Obs, policy: Policy | None) -> torch.Tensor:
        if policy is None:
            return self.fixed
        return torch.cat([policy(_first(obs, self.n_agents)).reshape(self.n_agents), self.fixed])

    def advance(self, target: torch.Tensor, alive: torch.Tensor) -> tuple:
        return self.env.step(torch.where(alive, target, torch.zeros_like(target)))

    def ledgers(self, cols: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
        bars, t = self.market.bars, cols.pop("t")[:, 0]
        out = {}
        for j, name in enumerate(self.names):
            df = pd.DataFrame({k: v[:, j] for k, v in cols.items()}, index=bars.index[t])
            df.insert(0, "price", bars["close"].to_numpy()[t])
            out[name] = df[list(COLUMNS)]
        return out


def run_policies(market: Market, split: str, policy: Policy | None) -> dict[str, pd.DataFrame]:
    """The ledgers of the agent (if given) and the baselines on ``split`` of one asset (``agent``,
    ``buy_and_hold``, ``flat``, and ``max_long`` where it applies)."""
    return walk(AssetBook(market, split, policy), policy)


def _first(obs: Obs, k: int) -> Obs:
    return Obs(obs.market[:k], obs.position[:k], None if obs.goal is None else obs.goal[:k])


def _risk_free(ledger: pd.DataFrame):
    return ledger["risk_free"].to_numpy() if "risk_free" in ledger else None


def excess_series(ledger: pd.DataFrame):
    """Per-bar net returns in excess of the cash rate: what every Sharpe ratio and test of a ledger reads."""
    return excess_returns(ledger["net_return"].to_numpy(), _risk_free(ledger))


def ledger_metrics(ledger: pd.DataFrame, bars_per_year: float) -> dict[str, float]:
    """Metrics of a ledger: the only path from an evaluation to reported numbers."""
    return compute_metrics(
        ledger["net_return"].to_numpy(),
        ledger["position"].to_numpy(),
        ledger["turnover"].to_numpy(),
        bars_per_year,
        _risk_free(ledger),
    )


def evaluate_split(market: Market, split: str, policy: Policy | None) -> dict[str, EvalResult]:
    """Ledgers and metrics of the agent and the baselines on ``split``."""
    return {
        name: EvalResult(split, df, ledger_metrics(df, market.bars_per_year))
        for name, df in run_policies(market, split, policy).items()
    }


class ModelPolicy:
    """The deterministic policy of an actor-critic (the Beta mean), in eval mode.

    With ``values``, the critic's value of every observation it acts on is appended there.
    With ``goals`` (a one-env :class:`~src.rl.her.GoalTracker` with a fixed goal), a
    goal-conditioned policy is told its goal and the tracker follows the realised growth.
    An ensemble (:class:`~src.models.ensemble.Ensemble`) acts with its aggregate as ``agent``
    and, in the same batched call, each member alone as ``member_i`` on its own env.
    """

    def __init__(self, model: torch.nn.Module, values: list[torch.Tensor] | None = None, goals=None) -> None:
        self.model, self.values, self.goals = model, values, goals
        n = len(getattr(model, "members", []))
        self.names = ["agent", *(f"member_{i}" for i in range(n))]

    def __call__(self, obs: Obs) -> torch.Tensor:
        k = len(self.names)  # run_policies passes the first k envs: one per name
        o = obs if self.goals is None else self.goals.attach(obs)  # goals: one agent only (no HER ensembles)
        dist, v = self.model(o)
        if self.values is not None:
            self.values.append(v[0].reshape(()))
        if k == 1:
            return dist.mean
        own = dist.member_means[torch.arange(k - 1), torch.arange(1, k)]  # member i on env 1 + i
        return torch.cat([dist.mean[:1], own])

    def after_step(self, log_growth: torch.Tensor, done: torch.Tensor) -> None:
        if self.goals is not None:
            self.goals.step(log_growth, done)


def model_policy(model: torch.nn.Module, values: list[torch.Tensor] | None = None, goals=None) -> Policy:
    """:class:`ModelPolicy` of ``model``."""
    return ModelPolicy(model, values, goals)
