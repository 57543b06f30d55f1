"""Curiosity as novelty of (market state, position): random network distillation (Burda et al., 2019).

Why not ICM (Pathak et al., 2017), this module's predecessor: ICM's bonus is a forward model's error in
predicting the next state's features. In a market the next bar is not the agent's doing, so that error is the
market's own unpredictability (a reward for standing in volatile bars, whatever one does): the project's review
measured, on TSLA, ICM bonuses for two different actions on the same transition correlated at 0.995; in the
protocol of ``tests/rl/test_addons.py`` (trained on a long-only behaviour), ICM gave the never-held opposite position
1.13x the bonus of the held one, correlated at 0.96 across states. The only part of the next state the agent
controls is its position, which a forward model predicts trivially. What is worth exploring is which positions
the agent has *not yet held in this kind of market*; RND measures exactly that: a fixed, randomly initialised
network ``f`` embeds x = (market state, position); a predictor ``g`` is trained on every visited x; the bonus
``||g(x') - f(x')||^2`` of the state x' a step reached is high where the agent has rarely been, and, because x'
holds the position the action chose, it depends on the action (in the same protocol: 27x for the never-held
position, correlated at 0.35).

The input gives the market and the position equal weight: the last bar's (train-normalised) features scaled by
1/sqrt(F), and the position u in [0, 1] across the env's limits (u = (p - low) / (high - low)) as a linear term
2u - 1 and Fourier features sin and cos of k pi u, k = 1..K, together scaled by 1/sqrt(2K + 1): each block has a
total variance of order 1, and no two positions in the limits share features (full long and full short are the
ends of one interval, not the same angle). The bonus is divided by a running std of bonuses (its scale stays
fixed while the predictor learns), times ``weight`` (x ``decay`` per iteration), added to the scaled extrinsic
reward; the predictor's loss (x ``loss_coef``) trains with the agent. Every iteration logs
``curiosity/action_effect``: the mean |bonus(p) - bonus(p')| over the bonus's std on the rollout's transitions,
with p' = low + high - p the position mirrored within the limits (the action's share of the signal; in the
test's protocol 0.26 for ICM, 51 for RND).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from src.core.errors import ConfigError
from src.envs.market_env import Obs
from src.rl.addons import AddOn, Batch, Iteration
from src.rl.value_norm import RunningMeanStd


class RND(nn.Module, AddOn):
    """``curiosity=rnd``; see the module docstring.

    Args:
        num_features, window: the observation shape (given by the module).
        hidden: width of the hidden layers; out_dim: embedding size.
        freqs: Fourier frequencies of the position (K).
        weight: bonus weight in reward units; decay: ``weight x decay ** iteration``.
        loss_coef: weight of the predictor's loss in the joint loss.
        position_limits: the env's [low, high] (given by the module).
    """

    changes_rewards = True

    def __init__(
        self,
        num_features: int,
        window: int,
        hidden: int = 64,
        out_dim: int = 32,
        freqs: int = 4,
        weight: float = 0.1,
        decay: float = 1.0,
        loss_coef: float = 1.0,
        position_limits: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        nn.Module.__init__(self)
        for k, v in (("hidden", hidden), ("out_dim", out_dim), ("freqs", freqs), ("loss_coef", loss_coef)):
            if v <= 0:
                raise ConfigError(f"curiosity.{k} must be > 0, got {v}")
        if weight < 0 or not 0.0 < decay <= 1.0:
            raise ConfigError(f"curiosity.weight must be >= 0 and curiosity.decay in (0, 1], got {weight}, {decay}")
        self.weight, self.decay, self.loss_coef, self.freqs = weight, decay, loss_coef, freqs
        self.num_features = num_features
        self.low, self.width = float(position_limits[0]), float(position_limits[1]) - float(position_limits[0])
        d = num_features + 2 * freqs + 1
        self.target = nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))
        self.target.requires_grad_(False)
        self.predictor = nn.Sequential(
            nn.Linear(d, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim)
        )
        self.reward_rms = RunningMeanStd()

    def features(self, obs: Obs) -> torch.Tensor:
        """x = (last bar's features / sqrt(F), position features / sqrt(2K + 1)); see the module docstring."""
        k = torch.arange(1, self.freqs + 1, device=obs.position.device, dtype=obs.position.dtype)
        u = (obs.position - self.low) / self.width  # (B, 1) in [0, 1]
        angle = math.pi * u * k  # (B, K)
        pos = torch.cat([2 * u - 1, angle.sin(), angle.cos()], dim=-1) / math.sqrt(2 * self.freqs + 1)
        return torch.cat([obs.market[:, -1, :] / math.sqrt(self.num_features), pos], dim=-1)

    def error(self, obs: Obs) -> torch.Tensor:
        """Per-sample squared distillation error of the state ``obs`` (B,)."""
        x = self.features(obs)
        return (self.predictor(x) - self.target(x)).pow(2).sum(dim=-1)

    @torch.no_grad()
    def bonus(self, next_obs: Obs, update_stats: bool = True) -> torch.Tensor:
        """The error divided by the running std of errors (updated with this batch first)."""
        raw = self.error(next_obs)
        if update_stats:
            self.reward_rms.update(raw)
        return (raw / (self.reward_rms.std.to(raw.dtype) + 1e-8)).to(next_obs.position.dtype)

    def weight_at(self, iteration: int) -> float:
        return self.weight * self.decay**iteration

    # ---- the add-on hooks ----
    def trained_modules(self) -> list[nn.Module]:
        return [self.predictor]

    def rewards(self, it: Iteration, rewards: torch.Tensor) -> torch.Tensor:
        nxt = it.next_obs()
        r_int = self.bonus(nxt)
        mirrored = Obs(nxt.market, 2 * self.low + self.width - nxt.position)  # the position mirrored in the limits
        flipped = self.bonus(mirrored, update_stats=False)
        w = self.weight_at(it.iteration)
        it.logs["curiosity/intrinsic_reward_mean"] = r_int.mean()
        it.logs["curiosity/intrinsic_reward_std"] = r_int.std()
        it.logs["curiosity/action_effect"] = (r_int - flipped).abs().mean() / r_int.std().clamp_min(1e-8)
        it.logs["curiosity/weight"] = torch.tensor(w)
        return rewards + w * r_int.view_as(rewards)

    def loss(self, model, mb: Batch, idx: torch.Tensor, it: Iteration, rule, terms: dict) -> torch.Tensor:
        nxt = it.next_obs()
        err = self.error(Obs(nxt.market.index_select(0, idx), nxt.position.index_select(0, idx))).mean()
        terms["rnd_predictor_loss"] = err
        return self.loss_coef * err
