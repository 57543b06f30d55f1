"""A planted market's oracle (:mod:`src.data.planted` stores its weights): evaluated through the same env, costs
and financing as the agent, and the report lines that state it."""

from __future__ import annotations

import torch

from src.data.market import Market
from src.evaluation.walk import evaluate_split


class OraclePolicy:
    """The oracle's weights along a split, in the order ``run_policies`` walks it (one call per bar)."""

    def __init__(self, market: Market, split: str) -> None:
        self.first, _ = market.decision_range(split)
        self.weights, self.step = market.oracle, 0
        self.device = market.device

    def __call__(self, obs):
        w = float(self.weights[self.first + self.step])
        self.step += 1
        return torch.full((obs.market.shape[0],), w, device=self.device)


def oracle_results(market: Market, split: str) -> dict:
    """The oracle's metrics on ``split``, through the same env, costs and financing as the agent."""
    return evaluate_split(market, split, OraclePolicy(market, split))["agent"].metrics


def oracle_section(market: Market) -> tuple[dict, list[str]]:
    """The oracle's validation and test Sharpe after costs, and the report lines that state them."""
    val, test = oracle_results(market, "val"), oracle_results(market, "test")
    out = {"val_sharpe": val["sharpe"], "test_sharpe": test["sharpe"], "test_turnover": test["turnover"]}
    line = (f"The oracle of this planted market ({market.name}: the policy that knows the planted edge, "
            "src/data/planted.py) earns, after the same costs: Sharpe {:.2f} on validation, {:.2f} on test "
            "(turnover {:.1f}).").format(out["val_sharpe"], out["test_sharpe"], out["test_turnover"])  # fmt: skip
    return out, ["## Oracle", "", line, ""]
