"""PPO loss terms (Schulman et al., 2017) as pure functions, CleanRL's conventions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.errors import ConfigError


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std advantages (population std, like CleanRL uses per minibatch)."""
    return (adv - adv.mean()) / (adv.std(unbiased=False) + eps)


def policy_loss(
    new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean of max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi_new / pi_old.

    Returns the loss and diagnostics: ``approx_kl`` (the low-variance
    estimator mean((r - 1) - log r), Schulman 2020) and ``clipfrac``.
    """
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    with torch.no_grad():
        stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(), "clipfrac": ((ratio - 1).abs() > clip).float().mean()}
    return loss, stats


def value_loss(new_v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, clip: float | None) -> torch.Tensor:
    """0.5 * squared error; with ``clip``, the max of the clipped and unclipped errors (PPO2 style)."""
    err = (new_v - returns) ** 2
    if clip is not None:
        clipped = old_v + (new_v - old_v).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns) ** 2)
    return 0.5 * err.mean()


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - pred) / Var(target); nan when the target is constant."""
    var = target.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (target - pred).var(unbiased=False) / var)


@dataclass
class PPOConfig:
    """PPO settings (``conf/algo/ppo.yaml``); invalid values are refused with the key named."""

    num_envs: int = 64
    rollout_steps: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    reward_scale: float = 100.0
    clip_coef: float = 0.2
    clip_vloss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    target_kl: float | None = None

    def __post_init__(self) -> None:
        for k in ("num_envs", "rollout_steps", "update_epochs", "num_minibatches"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"algo.{k} must be > 0, got {getattr(self, k)}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"algo.num_minibatches ({self.num_minibatches}) must divide algo.num_envs x "
                f"algo.rollout_steps ({self.batch_size})"
            )
        for k in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"algo.{k} must be in [0, 1], got {getattr(self, k)}")
        if self.reward_scale <= 0:
            raise ConfigError(f"algo.reward_scale must be > 0, got {self.reward_scale}")
        for k in ("clip_coef", "vf_coef", "ent_coef", "max_grad_norm"):
            if getattr(self, k) < 0:
                raise ConfigError(f"algo.{k} must be >= 0, got {getattr(self, k)}")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches
