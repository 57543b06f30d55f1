"""Vectorised trading envs in torch (single asset, augmented paths, universe, portfolio, population), their
accounting as pure functions, and a Gymnasium wrapper."""

from src.envs.market_env import MarketEnv, Obs

__all__ = ["MarketEnv", "Obs"]
