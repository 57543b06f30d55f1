"""Group-relative policy optimisation (GRPO; Shao et al., 2024, DeepSeekMath) for a market env.

GRPO drops the critic. Each iteration draws ``num_groups`` start bars; from
each, ``group_size`` trajectories of ``horizon`` bars are rolled out with the
current (stochastic) policy. All members of a group see the *same* price path,
so they differ only by the actions sampled: the group-relative advantage
``(R_i - mean(R)) / std(R)`` of a trajectory's outcome ``R_i`` (its log growth
net of costs) credits the actions, not the market. Every step of a trajectory
gets its trajectory's advantage (outcome supervision). The loss is PPO's
clipped ratio objective plus ``kl_coef`` times the k3 estimator of
KL(pi_theta || pi_ref) (DeepSeekMath eq. 4), with the reference policy the
previous iteration's (the behaviour policy that collected the group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.errors import ConfigError


def group_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """(R - group mean) / (group std + eps) for (N,) returns laid out as consecutive groups.

    The std is the population std of the group; a group whose members all earned the same
    return gets zero advantages (nothing to prefer).
    """
    if returns.ndim != 1 or returns.numel() % group_size:
        raise ValueError(
            f"returns must be (N,) with N a multiple of group_size={group_size}, got {tuple(returns.shape)}"
        )
    g = returns.view(-1, group_size)
    adv = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv.reshape(-1)


def kl_k3(new_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-sample unbiased, non-negative estimator of KL(pi_new || pi_ref) from samples of pi_new's
    behaviour: exp(ref - new) - (ref - new) - 1 (Schulman, 2020; DeepSeekMath eq. 4)."""
    d = ref_logp - new_logp
    return d.exp() - d - 1


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    adv: torch.Tensor,
    clip: float,
    kl_coef: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate plus ``kl_coef`` x k3 KL, averaged over the (masked) steps.

    ``mask`` (bool, same shape) leaves out steps after an episode ended early (bankruptcy).
    """
    ratio = (new_logp - old_logp).exp()
    surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    kl = kl_k3(new_logp, ref_logp)
    w = torch.ones_like(adv) if mask is None else mask.to(adv.dtype)
    n = w.sum().clamp_min(1.0)
    pg, kl_mean = (surrogate * w).sum() / n, (kl * w).sum() / n
    with torch.no_grad():
        log_ratio = new_logp - old_logp
        stats = {
            "approx_kl": (((ratio - 1) - log_ratio) * w).sum() / n,
            "clipfrac": (((ratio - 1).abs() > clip).to(adv.dtype) * w).sum() / n,
            "kl_ref": kl_mean.detach(),
        }
    return pg + kl_coef * kl_mean, {"policy_loss": pg.detach(), **stats}


@dataclass
class GRPOConfig:
    """GRPO settings (``conf/algo/grpo.yaml``). One iteration = ``num_groups x group_size`` trajectories
    of ``horizon`` bars, then ``update_epochs x num_minibatches`` gradient steps (each counts toward
    ``trainer.max_steps``). The critic head exists (same model) but is never trained or used."""

    num_groups: int = 4
    group_size: int = 8
    horizon: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    reward_scale: float = 100.0
    clip_coef: float = 0.2
    kl_coef: float = 0.04
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    gamma: float = 0.99  # only for the val/value_loss diagnostic of the (untrained) critic

    def __post_init__(self) -> None:
        for k in ("num_groups", "horizon", "update_epochs", "num_minibatches"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"algo.{k} must be > 0, got {getattr(self, k)}")
        if self.group_size < 2:
            raise ConfigError(f"algo.group_size must be >= 2 (a group of one has no baseline), got {self.group_size}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"algo.num_minibatches ({self.num_minibatches}) must divide num_groups x group_size x horizon "
                f"({self.batch_size})"
            )
        for k in ("clip_coef", "kl_coef", "ent_coef", "max_grad_norm"):
            if getattr(self, k) < 0:
                raise ConfigError(f"algo.{k} must be >= 0, got {getattr(self, k)}")
        if self.reward_scale <= 0:
            raise ConfigError(f"algo.reward_scale must be > 0, got {self.reward_scale}")

    @property
    def num_envs(self) -> int:
        return self.num_groups * self.group_size

    @property
    def rollout_steps(self) -> int:
        return self.horizon

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.horizon

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches
