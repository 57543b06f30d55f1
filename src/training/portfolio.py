"""PPO allocating a portfolio (``env=portfolio``): the policy of :mod:`src.models.portfolio` on
:class:`src.envs.portfolio_env.PortfolioEnv`, selected on the validation Sharpe of its book, and evaluated beside
equal-weight buy-and-hold, 1/N rebalanced monthly, cash and every asset alone (:mod:`src.evaluation.portfolio`)."""

from __future__ import annotations

import torch

from src.data.portfolio import PortfolioMarket
from src.envs.portfolio_env import PortfolioEnv
from src.evaluation.portfolio import evaluate_portfolio
from src.evaluation.walk import EvalResult
from src.models.portfolio import PortfolioActorCritic
from src.training.module import PPOModule

MODEL_KEYS = ("d_model", "n_heads", "n_layers", "d_ff", "dropout", "pool", "head_hidden", "cross_layers")


class PortfolioModule(PPOModule):
    """:class:`PPOModule` on a portfolio: ``self.results[split]`` the agent and the baselines,
    ``self.asset_results[split]`` every asset held alone."""

    def __init__(self, cfg: dict, market: PortfolioMarket) -> None:  # named as PPOModule's: not a hyper-parameter
        super().__init__(cfg, market)
        self.asset_results: dict[str, dict[str, EvalResult]] = {}

    def _build_policy(self, ens, shape: dict):
        m, spec = self.market, self.cfg.model
        kwargs = {k: spec[k] for k in MODEL_KEYS if k in spec}
        return PortfolioActorCritic(m.num_assets, m.num_features, m.window, m.mode, **kwargs), []

    def _train_env(self, gen: torch.Generator) -> PortfolioEnv:
        return PortfolioEnv(self.market, "train", self.ppo.num_envs, random_start=True, generator=gen)

    def policy(self, values=None):
        model = self.model

        def act(obs):
            dist, v = model(obs)
            return dist.mean, v

        return act

    def _evaluate(self, split: str, values: list[torch.Tensor] | None = None) -> dict[str, EvalResult]:
        self.model.eval()
        res, holds = evaluate_portfolio(self.market, split, self.policy(), values)
        self.results[split], self.asset_results[split] = res, holds
        return res
