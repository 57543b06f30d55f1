"""Vectorised trading environment and its Gymnasium wrapper."""

from src.envs.market_env import MarketEnv, Obs

__all__ = ["MarketEnv", "Obs"]
