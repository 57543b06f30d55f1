"""PPO (Schulman et al., 2017): loss terms as pure functions (CleanRL's conventions) and the update rule.

:class:`PPO` is ``algo=ppo``'s rule (:mod:`src.rl.addons`): GAE targets on the critic's denormalised values,
value targets normalised by :class:`~src.rl.value_norm.ValueNorm` (``algo.norm_values``), the clipped surrogate,
a value loss clipped by ``algo.vf_clip`` (in units of the returns' std, separate from the policy's clip) and
the policy's own regulariser (an ensemble's diversity term, 0 for one actor-critic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.core.errors import ConfigError
from src.rl.addons import Batch, Iteration
from src.rl.gae import compute_gae
from src.rl.value_norm import ValueNorm


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
    vf_clip: float | None = 0.2  # value clip in units of the returns' std (norm_values) or raw units; None: off
    norm_values: bool = True
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
        if self.vf_clip is not None and self.vf_clip <= 0:
            raise ConfigError(f"algo.vf_clip must be > 0 or null (no value clip), got {self.vf_clip}")

    def rule(self, model: nn.Module) -> PPO:
        return PPO(self)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


class PPO(nn.Module):
    """``algo=ppo``'s update rule (see the module docstring); a module so its value statistics are checkpointed."""

    has_critic = True
    grouped_episodes = False  # GRPO's groups restart every iteration; PPO's episodes run on across rollouts
    fusable = True  # compile=true may fuse its loss, gradients and clip into one graph

    def __init__(self, cfg: PPOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.value_norm = ValueNorm() if cfg.norm_values else None

    def raw_values(self, v: torch.Tensor) -> torch.Tensor:
        """The critic's outputs in return units (log-percent)."""
        return v if self.value_norm is None else self.value_norm.denormalize(v)

    def critic_units(self, returns: torch.Tensor) -> torch.Tensor:
        """Returns in the critic's output units."""
        return returns if self.value_norm is None else self.value_norm.normalize(returns)

    def value_std(self) -> torch.Tensor | float:
        """One critic unit in return units."""
        return 1.0 if self.value_norm is None else self.value_norm.stats()[1].float()

    def begin(self, model: nn.Module, it: Iteration) -> None:
        """Before the rollout (nothing for PPO)."""

    def targets(self, it: Iteration, rewards: torch.Tensor) -> Batch:
        b, p = it.rollout, self.cfg
        values, it.raw_next_values = self.raw_values(b.values), self.raw_values(b.next_values)  # before the update
        adv, ret = compute_gae(rewards, values, it.raw_next_values, b.terminated, b.dones, p.gamma, p.gae_lambda)
        if self.value_norm is not None:  # targets in the units of this iteration's statistics (MAPPO)
            self.value_norm.update(ret)
            mean, std = self.value_norm.stats()
            it.logs["value_norm/mean"], it.logs["value_norm/std"] = mean.float(), std.float()
        it.logs["losses/explained_variance"] = torch.tensor(explained_variance(values.flatten(), ret.flatten()))
        flat = lambda x: x.reshape(-1)  # noqa: E731
        return Batch(
            b.flat_obs(),
            b.actions.flatten(0, 1),
            flat(b.logprobs),
            flat(b.values),
            flat(adv),
            flat(self.critic_units(ret)),
        )

    def loss(self, model: nn.Module, mb: Batch, params: dict | None = None) -> tuple[torch.Tensor, dict]:
        """PPO's loss on one minibatch and its logged terms; ``params``: call ``model`` functionally with them."""
        p = self.cfg
        dist, v = model(mb.obs) if params is None else torch.func.functional_call(model, params, (mb.obs,))
        adv = normalize_advantages(mb.advantages) if p.norm_adv else mb.advantages
        pg, diag = policy_loss(dist.log_prob(mb.actions), mb.logprobs, adv, p.clip_coef)
        vl = value_loss(v, mb.values, mb.returns, p.vf_clip)
        ent = dist.entropy().mean()
        reg, reg_terms = dist.regularizer()
        terms = {"policy_loss": pg, "value_loss": vl, "entropy": ent, **diag, **reg_terms}
        return pg + p.vf_coef * vl - p.ent_coef * ent + reg, terms
