"""Replay storage and sampling for self-imitation (:mod:`src.rl.sil`) and hindsight relabelling (:mod:`src.rl.her`).

Sampling (``replay.kind``):

- ``uniform``: every stored transition equally likely; w_i = 1.
- ``prioritized``: Schaul et al. (2016), proportional: P(i) = p_i^alpha / sum p^alpha with
  p_i = (R_i - V(s_i))+ + eps (the self-imitation gap, in log-percent), a sum-tree with O(log n) update and
  sample, stratified sampling; priorities of the sampled transitions are refreshed with the latest gap after
  every use, new ones enter at the current max. Importance weights w_i = (N P(i))^-beta correct the
  sampling's bias (fully at beta = 1; beta is annealed from ``beta0`` to 1 over the run). Schaul et al.
  divide them by the buffer's largest weight "for stability"; that weight belongs to the floor priority, so
  with a floor far below typical gaps the whole batch is scaled towards 0 and the SIL term fades as beta
  grows. Here they are divided instead by their mean under the sampling distribution, sum_j P(j) w_j, so a
  batch's mean weight is ~1 (as uniform's) at every beta, and at beta = 1 the weighted loss is an unbiased
  estimate of the uniform one. The floor ``eps`` (0.01 log-percent) bounds a weight at
  ~(mean priority / eps)^(alpha beta).
- ``her``: hindsight relabelling for a goal-conditioned policy (:mod:`src.rl.her`); the
  relabelled transitions are stored beside the originals and sampled uniformly.

Storage is preallocated tensors on the model's device (no per-transition
Python objects): ``capacity x (window x features + 1 [+ 2 goal] + 2)`` float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from src.core.errors import ConfigError
from src.envs.market_env import Obs

KINDS = ("uniform", "prioritized", "her")


@dataclass
class ReplayConfig:
    """``conf/replay/*.yaml``; ``replay=none`` is an empty node (no replay)."""

    kind: str = "uniform"
    capacity: int = 16384  # transitions (4 PPO rollouts of 32 x 128)
    batch_size: int = 256  # replay transitions per PPO minibatch step
    coef: float = 1.0  # SIL loss weight
    value_coef: float = 0.01  # SIL value-loss weight (paper: 0.01)
    alpha: float = 0.6  # prioritisation exponent (prioritized)
    beta0: float = 0.4  # initial importance-sampling exponent, annealed to 1 (prioritized)
    eps: float = 0.01  # priority floor in log-percent, so every transition stays reachable (prioritized)
    her_k: int = 4  # relabels per transition (her)
    her_horizon: int = 16  # goal window in bars (her)
    goal_low: float = -0.5  # behaviour goals: annualised return drawn uniformly from [low, high] (her)
    goal_high: float = 1.0
    goal_weight: float = 1.0  # reward for reaching the goal at the window's end, in reward units (her)
    eval_goal: float = 0.05  # annualised return the policy is asked for at evaluation (her)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"replay.kind must be one of {KINDS}, got {self.kind!r}")
        for k in ("capacity", "batch_size", "her_horizon"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"replay.{k} must be > 0, got {getattr(self, k)}")
        if self.her_k < 0:  # 0: goal-conditioned self-imitation without relabelling (an ablation)
            raise ConfigError(f"replay.her_k must be >= 0, got {self.her_k}")
        if self.batch_size > self.capacity:
            raise ConfigError(f"replay.batch_size ({self.batch_size}) must be <= replay.capacity ({self.capacity})")
        if not 0 <= self.beta0 <= 1 or self.alpha < 0 or self.eps <= 0:
            raise ConfigError(
                f"replay needs alpha >= 0, 0 <= beta0 <= 1 and eps > 0, got {self.alpha}, {self.beta0}, {self.eps}"
            )
        if self.goal_low >= self.goal_high or self.goal_low <= -1:
            raise ConfigError(f"replay needs -1 < goal_low < goal_high, got {self.goal_low}, {self.goal_high}")
        for k in ("coef", "value_coef", "goal_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"replay.{k} must be >= 0, got {getattr(self, k)}")

    @property
    def prioritized(self) -> bool:
        return self.kind == "prioritized"

    @property
    def goal_conditioned(self) -> bool:
        return self.kind == "her"


class SumTree:
    """A binary sum-tree over ``capacity`` leaves in one float64 tensor (leaves at [P, 2P), P a power
    of two). ``update`` and ``sample`` are batched: each walks the log2(P) levels once for the batch."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        self.capacity = capacity
        self.size_pow2 = 1 << max(0, math.ceil(math.log2(capacity)))
        self.depth = int(math.log2(self.size_pow2))
        self.tree = torch.zeros(2 * self.size_pow2, dtype=torch.float64, device=device)

    @property
    def total(self) -> torch.Tensor:
        return self.tree[1]

    def leaves(self, n: int | None = None) -> torch.Tensor:
        p = self.size_pow2
        return self.tree[p : p + (self.capacity if n is None else n)]

    def update(self, idx: torch.Tensor, value: torch.Tensor) -> None:
        """Set leaves ``idx`` to ``value`` and recompute their ancestors (duplicates: the last write wins)."""
        node = idx.long() + self.size_pow2
        self.tree[node] = value.to(self.tree.dtype)
        for _ in range(self.depth):
            node = node // 2
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]

    def find(self, mass: torch.Tensor) -> torch.Tensor:
        """Leaf index whose cumulative-sum interval holds each ``mass`` in [0, total)."""
        node = torch.ones_like(mass, dtype=torch.long)
        mass = mass.to(self.tree.dtype).clone()
        for _ in range(self.depth):
            left = self.tree[2 * node]
            right = mass >= left
            mass = torch.where(right, mass - left, mass)
            node = 2 * node + right.long()
        return node - self.size_pow2

    def sample(self, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` leaf indices drawn proportionally to the leaves, stratified: one in each of n equal
        slices of the total mass (Schaul et al., appendix B.2.1). Leaves >= ``size`` are never drawn."""
        total = self.total
        u = torch.rand(n, dtype=self.tree.dtype, device=self.tree.device, generator=generator)
        mass = (torch.arange(n, dtype=self.tree.dtype, device=self.tree.device) + u) * (total / n)
        idx = self.find(mass.clamp(max=total * (1 - 1e-12)))
        return idx.clamp(max=size - 1)


class ReplayBuffer:
    """Circular transition store + uniform or prioritized sampling (see the module docstring)."""

    def __init__(self, cfg: ReplayConfig, window: int, num_features: int, device: torch.device | str) -> None:
        self.cfg, c = cfg, cfg.capacity
        self.market = torch.zeros(c, window, num_features, device=device)
        self.position = torch.zeros(c, 1, device=device)
        self.goal = torch.zeros(c, 2, device=device) if cfg.goal_conditioned else None
        self.member: torch.Tensor | None = None  # the acting ensemble member, allocated when first given
        self.actions = torch.zeros(c, device=device)
        self.returns = torch.zeros(c, device=device)
        self.tree = SumTree(c, device) if cfg.prioritized else None
        self.max_priority = 1.0
        self.ptr, self.size, self.added = 0, 0, 0

    @property
    def nbytes(self) -> int:
        ts = [self.market, self.position, self.actions, self.returns] + ([self.goal] if self.goal is not None else [])
        return sum(t.numel() * t.element_size() for t in ts) + (self.tree.tree.numel() * 8 if self.tree else 0)

    def add(self, obs: Obs, actions: torch.Tensor, returns: torch.Tensor) -> None:
        """Store a batch of transitions, overwriting the oldest (of a batch larger than the buffer,
        only its last ``capacity`` transitions are kept)."""
        cap = self.cfg.capacity
        if actions.shape[0] > cap:
            last = lambda x: None if x is None else x[-cap:]  # noqa: E731
            obs = Obs(obs.market[-cap:], obs.position[-cap:], last(obs.goal), last(obs.member))
            actions, returns = actions[-cap:], returns[-cap:]
        b = actions.shape[0]
        idx = (torch.arange(b, device=self.actions.device) + self.ptr) % self.cfg.capacity
        self.market[idx] = obs.market
        self.position[idx] = obs.position
        if self.goal is not None:
            self.goal[idx] = obs.goal
        if obs.member is not None:
            if self.member is None:
                self.member = torch.zeros(cap, dtype=torch.long, device=idx.device)
            self.member[idx] = obs.member
        self.actions[idx], self.returns[idx] = actions, returns
        if self.tree is not None:  # new transitions at the max priority: each is seen at least once soon
            self.tree.update(idx, torch.full((b,), self.max_priority**self.cfg.alpha, device=idx.device))
        self.ptr = (self.ptr + b) % self.cfg.capacity
        self.size = min(self.size + b, self.cfg.capacity)
        self.added += b

    def sample(
        self, n: int, beta: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and importance weights (ones unless prioritized)."""
        dev = self.actions.device
        if self.tree is None:
            idx = torch.randint(0, self.size, (n,), device=dev, generator=generator)
            return idx, torch.ones(n, device=dev)
        idx = self.tree.sample(n, self.size, generator)
        return idx, importance_weights(self.tree.leaves(self.size), idx, beta).float()

    def get(self, idx: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor]:
        goal = None if self.goal is None else self.goal[idx]
        member = None if self.member is None else self.member[idx]
        return Obs(self.market[idx], self.position[idx], goal, member), self.actions[idx], self.returns[idx]

    def update_priorities(self, idx: torch.Tensor, gaps: torch.Tensor) -> None:
        """Priorities of sampled transitions := (R - V)+ + eps (the latest estimate)."""
        if self.tree is None:
            return
        p = gaps.detach().clamp_min(0).double() + self.cfg.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(idx, p**self.cfg.alpha)

    def state_dict(self) -> dict:
        s = {k: getattr(self, k).cpu() for k in ("market", "position", "actions", "returns")}
        s.update(
            goal=None if self.goal is None else self.goal.cpu(),
            member=None if self.member is None else self.member.cpu(),
            ptr=self.ptr,
            size=self.size,
            added=self.added,
            max_priority=self.max_priority,
            tree=None if self.tree is None else self.tree.tree.cpu(),
        )
        return s

    def load_state_dict(self, s: dict) -> None:
        if s["market"].shape != self.market.shape:
            raise ConfigError(
                f"the checkpoint's replay buffer is {tuple(s['market'].shape)}, the config makes "
                f"{tuple(self.market.shape)}: replay.capacity or the env changed"
            )
        for k in ("market", "position", "actions", "returns"):
            getattr(self, k).copy_(s[k])
        if self.goal is not None:
            self.goal.copy_(s["goal"])
        if s.get("member") is not None:
            self.member = s["member"].to(self.actions.device)
        if self.tree is not None:
            self.tree.tree.copy_(s["tree"])
        self.ptr, self.size, self.added, self.max_priority = s["ptr"], s["size"], s["added"], s["max_priority"]


def importance_weights(priorities: torch.Tensor, idx: torch.Tensor, beta: float) -> torch.Tensor:
    """w_i = (N P(i))^-beta / sum_j P(j) (N P(j))^-beta over the N stored transitions, P(i) = p_i / sum p
    (``priorities`` are the stored p^alpha): mean 1 under the sampling distribution (see the module docstring)."""
    n = priorities.numel()
    probs = priorities / priorities.sum()
    raw = (n * probs) ** (-beta)
    return raw[idx] / (probs * raw).sum()


def annealed_beta(beta0: float, progress: float) -> float:
    """beta0 at the start, 1 at the end of the budget (``progress`` in [0, 1])."""
    return beta0 + (1.0 - beta0) * min(max(progress, 0.0), 1.0)


def sil_loss(
    logp: torch.Tensor,
    value: torch.Tensor,
    returns: torch.Tensor,
    weights: torch.Tensor,
    value_coef: float,
    value_scale: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Self-imitation loss (Oh et al., 2018, eq. 1-3) with importance weights; ``value`` and ``returns`` in
    return units, the gaps divided by ``value_scale`` (the critic's units) in both terms.

    Returns the loss, the gaps (R - V)+ (new priorities) and diagnostics.
    """
    gap = (returns - value).clamp_min(0.0)
    pol = -(logp * (gap / value_scale).detach() * weights).mean()
    val = 0.5 * (weights * (gap / value_scale).pow(2)).mean()
    with torch.no_grad():
        stats = {
            "sil_policy_loss": pol.detach(),
            "sil_value_loss": val.detach(),
            "sil_positive_frac": (gap > 0).float().mean(),
            "sil_gap_mean": gap.mean(),
        }
    return pol + value_coef * val, gap.detach(), stats
