"""PPO across a universe (``env=universe``): one policy trained on every ticker's episodes, selected on the pooled
book's validation Sharpe, and evaluated ticker by ticker (:mod:`src.evaluation.universe`)."""

from __future__ import annotations

import torch

from src.data.universe import Universe
from src.envs.universe_env import UniverseEnv, concatenated
from src.evaluation.universe import pooled_results
from src.evaluation.walk import EvalResult, evaluate_split
from src.training.module import PPOModule


class UniverseModule(PPOModule):
    """:class:`PPOModule` whose training env walks every ticker and whose evaluation is per ticker and pooled.

    ``self.market`` is the tickers' series end to end (what the model's shapes and the checkpoint's data hash
    read); ``self.ticker_results[split]`` holds every ticker's own results after an evaluation.
    """

    def __init__(self, cfg: dict, market: Universe) -> None:  # named as PPOModule's: not a hyper-parameter
        super().__init__(cfg, concatenated(market))
        self.universe = market
        self.ticker_results: dict[str, dict[str, dict[str, EvalResult]]] = {}

    def setup(self, stage: str) -> None:
        for m in self.universe.markets:
            m.to(self.device)
        super().setup(stage)

    def _train_env(self, gen: torch.Generator) -> UniverseEnv:
        grouped = {"episode_length": self.ppo.horizon, "group_size": self.ppo.group_size} if self.grpo else {}
        return UniverseEnv(self.universe, self.ppo.num_envs, gen, weights=self.universe.weights,
                           compile=bool(self.cfg.get("compile")), market=self.market, **grouped)  # fmt: skip

    def _evaluate(self, split: str, values: list[torch.Tensor] | None = None) -> dict[str, EvalResult]:
        self.model.eval()
        per = {m.name: evaluate_split(m, split, self.policy()) for m in self.universe.markets}
        res = pooled_results(per, self.market.bars_per_year)
        self.results[split], self.ticker_results[split] = res, per
        return res

    def _value_loss(self, values: list[torch.Tensor], net_returns) -> float:
        return float("nan")  # the critic is not followed along a pooled book
