"""Intrinsic Curiosity Module (Pathak et al., 2017) for the market env.

A feature encoder phi is shaped by an *inverse* model (predict the action a_t
from phi(s_t), phi(s_t+1)); a *forward* model predicts phi(s_t+1) from
phi(s_t) and a_t. The intrinsic reward is the forward model's error,
``eta / 2 * ||f(phi(s_t), a_t) - phi(s_t+1)||^2``, divided by a running std of
intrinsic rewards so its scale stays fixed while the models learn, and added to
the (scaled) extrinsic reward with ``weight`` (times ``decay`` per iteration).
Both ICM losses train jointly with the agent: ``loss_coef * ((1 - beta) L_inv + beta L_fwd)``
is added to every PPO minibatch loss and stepped by the same optimizer.

In a market the next window of prices does not depend on the agent's action;
only the held weight does. The inverse loss therefore teaches phi to keep what
the action controls (the book) and drop price noise the forward model could
never predict, which is the point of the paper: curiosity about what the agent
can affect, not about an unpredictable tape. The forward target phi(s_t+1) is
detached (the encoder is trained by the inverse loss and the forward input),
which avoids the trivial solution phi = 0; phi ends in a LayerNorm without gains, so the inverse
loss cannot inflate the feature scale and an error keeps the same meaning as training goes on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.envs.market_env import Obs
from src.errors import ConfigError


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al. parallel update), as buffers,
    so they are saved with the module's state dict."""

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n, m, v = x.numel(), x.mean(), x.var(unbiased=False)
        delta, tot = m - self.mean, self.count + n
        new_mean = self.mean + delta * n / tot
        m2 = self.var * self.count + v * n + delta**2 * self.count * n / tot
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


class ICM(nn.Module):
    """Encoder, inverse and forward models; see the module docstring.

    Args:
        num_features, window: the observation shape (given by the module).
        feature_dim: size of phi(s); hidden: width of every hidden layer.
        beta: forward vs inverse weight in the ICM loss (paper: 0.2).
        eta: intrinsic reward scale before normalisation.
        weight: intrinsic reward weight added to the scaled extrinsic reward.
        decay: ``weight`` is multiplied by ``decay ** iteration`` (1.0: constant).
        loss_coef: weight of the ICM loss in the joint loss (paper's 1 - lambda ratio).
    """

    def __init__(
        self,
        num_features: int,
        window: int,
        feature_dim: int = 32,
        hidden: int = 64,
        beta: float = 0.2,
        eta: float = 1.0,
        weight: float = 0.1,
        decay: float = 1.0,
        loss_coef: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"curiosity.beta must be in [0, 1], got {beta}")
        for k, v in (("feature_dim", feature_dim), ("hidden", hidden), ("eta", eta), ("loss_coef", loss_coef)):
            if v <= 0:
                raise ConfigError(f"curiosity.{k} must be > 0, got {v}")
        if weight < 0 or not 0.0 < decay <= 1.0:
            raise ConfigError(f"curiosity.weight must be >= 0 and curiosity.decay in (0, 1], got {weight}, {decay}")
        self.beta, self.eta, self.weight, self.decay, self.loss_coef = beta, eta, weight, decay, loss_coef
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features * window + 1, hidden),
            nn.ELU(),
            nn.Linear(hidden, feature_dim),
            nn.LayerNorm(feature_dim, elementwise_affine=False),
        )
        self.inverse = nn.Sequential(nn.Linear(2 * feature_dim, hidden), nn.ELU(), nn.Linear(hidden, 1))
        self.forward_model = nn.Sequential(nn.Linear(feature_dim + 1, hidden), nn.ELU(), nn.Linear(hidden, feature_dim))
        self.reward_rms = RunningMeanStd()

    def phi(self, obs: Obs) -> torch.Tensor:
        x = torch.cat([obs.market.flatten(1), obs.position], dim=-1)
        return self.encoder(x)

    def losses(self, obs: Obs, action: torch.Tensor, next_obs: Obs) -> dict[str, torch.Tensor]:
        """Per-sample forward error (for the reward) and the mean inverse / forward / joint losses."""
        f, f_next = self.phi(obs), self.phi(next_obs)
        a = action.reshape(-1, 1)
        pred_a = torch.tanh(self.inverse(torch.cat([f, f_next], dim=-1)))  # actions are weights in [-1, 1]
        pred_next = self.forward_model(torch.cat([f, a], dim=-1))
        fwd_err = 0.5 * (pred_next - f_next.detach()).pow(2).sum(dim=-1)
        inv = F.mse_loss(pred_a, a)
        fwd = fwd_err.mean()
        return {
            "forward_error": fwd_err,
            "inverse_loss": inv,
            "forward_loss": fwd,
            "loss": self.loss_coef * ((1 - self.beta) * inv + self.beta * fwd),
        }

    @torch.no_grad()
    def intrinsic_reward(
        self, obs: Obs, action: torch.Tensor, next_obs: Obs, update_stats: bool = True
    ) -> torch.Tensor:
        """eta * forward error, divided by the running std of that quantity (updated with this batch first)."""
        raw = self.eta * self.losses(obs, action, next_obs)["forward_error"]
        if update_stats:
            self.reward_rms.update(raw)
        return (raw / (self.reward_rms.std.to(raw.dtype) + 1e-8)).to(action.dtype)

    def weight_at(self, iteration: int) -> float:
        return self.weight * self.decay**iteration
