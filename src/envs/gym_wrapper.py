"""A Gymnasium view of one episode of :class:`MarketEnv`, for the rest of the ecosystem (SB3, ...)."""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from src.data.market import NORM_CLIP, Market
from src.envs.market_env import MarketEnv, Obs


class TradingEnv(gym.Env):
    """One trading episode; the action is the target weight within ``env.position_limits`` (default [-1, 1]).

    Observation: ``{"market": (window, F) normalised features, "position": (1,) current weight}``.
    ``reset(options={"start": bar})`` starts at a given decision bar; otherwise a random one.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, market: Market, split: str = "train", random_start: bool = True) -> None:
        super().__init__()
        self.market = market.to("cpu")
        self._gen = torch.Generator()
        self._env = MarketEnv(
            market, split, num_envs=1, random_start=random_start, generator=self._gen, auto_reset=False
        )
        w, f = market.window, market.num_features
        self.observation_space = spaces.Dict(
            {
                "market": spaces.Box(-NORM_CLIP, NORM_CLIP, (w, f), np.float32),  # features are clipped
                "position": spaces.Box(-np.inf, np.inf, (1,), np.float32),
            }
        )
        lo, hi = market.position_limits
        self.action_space = spaces.Box(lo, hi, (1,), np.float32)
        self._ended = True  # until the first reset

    @staticmethod
    def _np(obs: Obs) -> dict[str, np.ndarray]:
        return {"market": obs.market[0].numpy().copy(), "position": obs.position[0].numpy().copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._gen.manual_seed(seed)
        obs = self._env.reset()
        self._ended = False
        if options and "start" in options:
            first, last = self._env.first, self._env.last
            start = int(options["start"])
            if not first <= start <= last:
                raise ValueError(f"options['start'] must be in [{first}, {last}], got {start}")
            self._env.t.fill_(start)
            obs = self._env.observe(self._env.t, self._env.position)
        return self._np(obs), {"t": int(self._env.t[0])}

    def step(self, action):
        if self._ended:  # past a truncation the next bar belongs to the next split: never step into it
            raise RuntimeError("TradingEnv: the episode has ended (terminated or truncated): call reset() first")
        a = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1))
        obs, reward, term, trunc, info = self._env.step(a)
        out = {k: float(v[0]) for k, v in info.items()}
        self._ended = bool(term[0]) or bool(trunc[0])
        return self._np(obs), float(reward[0]), bool(term[0]), bool(trunc[0]), out
