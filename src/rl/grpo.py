"""Group-relative policy optimisation (GRPO; Shao et al., 2024, DeepSeekMath) for a market env.

GRPO drops the critic. Each iteration draws ``num_groups`` start bars; from
each, ``group_size`` trajectories of ``horizon`` bars are rolled out with the
current (stochastic) policy. All members of a group see the *same* price path,
so they differ only by the actions sampled: the group-relative advantage
``(R_i - mean(R)) / std(R)`` of a trajectory's outcome ``R_i`` (its log growth
net of costs) credits the actions, not the market. Every step of a trajectory
gets its trajectory's advantage (outcome supervision). The loss is PPO's
clipped ratio objective plus ``kl_coef`` times the k3 estimator of
KL(pi_theta || pi_ref) (DeepSeekMath eq. 4). The reference policy is a frozen copy of the
policy, refreshed every ``ref_every`` iterations (DeepSeekMath's outer loop): the KL term
holds the policy near where it stood, not near the behaviour policy of the last rollout
(which the clipped ratio already does). A member that went bankrupt is out from the step
after: its later steps count in neither the surrogate, the KL nor the entropy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from src.core.errors import ConfigError
from src.rl.addons import Batch, Iteration, take_obs


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
    ref_every: int = 10  # iterations between refreshes of the frozen reference policy
    gamma: float = 0.99  # only for the val/value_loss diagnostic of the (untrained) critic

    def __post_init__(self) -> None:
        for k in ("num_groups", "horizon", "update_epochs", "num_minibatches", "ref_every"):
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

    def rule(self, model: nn.Module) -> GRPO:
        return GRPO(self, model)

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


def alive_mask(terminated: torch.Tensor) -> torch.Tensor:
    """(T, N) bool: the steps of each trajectory up to and including its bankruptcy (none after)."""
    alive = torch.ones_like(terminated)
    alive[1:] = ~(terminated[:-1].cumsum(0).bool())
    return alive


class GRPO(nn.Module):
    """``algo=grpo``'s update rule (see the module docstring). The frozen reference is a submodule, so
    checkpoints carry it and a resumed run keeps the same reference."""

    has_critic = False
    grouped_episodes = True
    fusable = False  # compile=true leaves GRPO eager

    def __init__(self, cfg: GRPOConfig, model: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.ref = copy.deepcopy(model).requires_grad_(False)  # no dropout (refused): its mode does not matter

    def raw_values(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def critic_units(self, returns: torch.Tensor) -> torch.Tensor:
        return returns

    def value_std(self) -> float:
        return 1.0

    @torch.no_grad()
    def begin(self, model: nn.Module, it: Iteration) -> None:
        """Refresh the frozen reference every ``ref_every`` iterations (the first included)."""
        if it.iteration % self.cfg.ref_every == 0:
            self.ref.load_state_dict(model.state_dict())

    def targets(self, it: Iteration, rewards: torch.Tensor) -> Batch:
        """Group-relative advantage of each trajectory's total reward, broadcast over its steps."""
        b, p = it.rollout, self.cfg
        alive = alive_mask(b.terminated)
        returns = (rewards * alive).sum(0)  # (N,)
        adv = group_advantages(returns, p.group_size).expand_as(rewards)
        g = returns.view(-1, p.group_size)
        it.logs["grpo/return_mean"] = returns.mean()
        it.logs["grpo/within_group_std"] = g.std(dim=1, unbiased=False).mean()
        it.logs["grpo/between_group_std"] = g.mean(dim=1).std(unbiased=False)
        obs, actions = b.flat_obs(), b.actions.reshape(-1)
        with torch.no_grad():  # the reference's log-probabilities, in minibatch-sized chunks
            chunks = torch.arange(actions.numel(), device=actions.device).split(p.minibatch_size)
            ref = torch.cat([self.ref(take_obs(obs, i))[0].log_prob(actions[i]) for i in chunks])
        flat = lambda x: x.reshape(-1)  # noqa: E731
        r = flat(returns.expand_as(rewards))
        return Batch(obs, actions, flat(b.logprobs), flat(b.values), flat(adv), r, flat(alive), ref)

    def loss(self, model: nn.Module, mb: Batch, params: dict | None = None) -> tuple[torch.Tensor, dict]:
        p = self.cfg
        dist, _ = model(mb.obs) if params is None else torch.func.functional_call(model, params, (mb.obs,))
        logp = dist.log_prob(mb.actions)
        pg_kl, terms = grpo_loss(logp, mb.logprobs, mb.ref_logprobs, mb.advantages, p.clip_coef, p.kl_coef, mb.mask)
        w = mb.mask.to(logp.dtype)
        ent = (dist.entropy() * w).sum() / w.sum().clamp_min(1.0)  # the bankrupt's later steps do not count
        reg, reg_terms = dist.regularizer()
        terms.update(entropy=ent, **reg_terms)
        return pg_kl - p.ent_coef * ent + reg, terms
