"""A population's training envs: member k's episodes on rows ``k*n .. (k+1)*n``, from its own generator
(``population=K``; the model is :mod:`src.models.population`)."""

from __future__ import annotations

import torch

from src.data.market import Market
from src.envs.market_env import MarketEnv


class PopulationEnv(MarketEnv):
    """K x n training envs, member k's on rows ``k*n .. (k+1)*n``, each member drawing its episode starts from
    its own generator with the shapes its own run's env draws them (so it walks the same episodes)."""

    def __init__(self, market: Market, num_envs: int, generators: list[torch.Generator], **kwargs) -> None:
        self.gens = generators
        super().__init__(market, "train", num_envs * len(generators), random_start=True, generator=generators[0],
                         **kwargs)  # fmt: skip

    def _starts(self, k: int) -> torch.Tensor:
        if k != self.n or not self.random_start:
            return super()._starts(k)
        full, parts = self.n, []
        self.n = k // len(self.gens)
        try:
            for g in self.gens:
                self.gen = g
                parts.append(super()._starts(self.n))
        finally:
            self.n, self.gen = full, self.gens[0]
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return super().state_dict() | {"generators": [g.get_state() for g in self.gens]}

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        for g, s in zip(self.gens, saved["generators"], strict=True):
            g.set_state(s)
