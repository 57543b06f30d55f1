"""The pieces of one training iteration, each a small object with one interface.

:class:`src.training.module.PPOModule` orchestrates an iteration: rollout -> rewards -> targets -> update -> log.

- An **update rule** (``algo`` group: :class:`src.rl.ppo.PPO`, :class:`src.rl.grpo.GRPO`) turns a rollout and
  its rewards into a :class:`Batch` of per-step targets (``targets``) and a minibatch into a loss (``loss``).
- An **add-on** (``curiosity``, ``replay`` and ``ensemble`` groups) is an :class:`AddOn`: it may transform the
  rewards (a curiosity bonus, HER's goal rewards), see the rollout once its targets exist (store it for
  replay), add a loss term to every minibatch (self-imitation, the curiosity model's own loss, ensemble
  diversity) and train modules of its own with the agent's optimizer. Every hook defaults to doing nothing,
  so a new add-on is one class in one file plus one config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from src.envs.market_env import Obs


@dataclass
class Batch:
    """The flat (T x N) per-step data of one update: what the behaviour policy saw and did, and the targets."""

    obs: Obs
    actions: torch.Tensor
    logprobs: torch.Tensor  # behaviour log-probabilities
    values: torch.Tensor  # the critic's outputs at collection (its own units: see PPO's value normalisation)
    advantages: torch.Tensor
    returns: torch.Tensor  # value targets in the critic's units
    mask: torch.Tensor | None = None  # steps that count (GRPO: not after a bankruptcy)
    ref_logprobs: torch.Tensor | None = None  # a reference policy's log-probabilities (GRPO)

    @property
    def size(self) -> int:
        return self.actions.shape[0]

    def take(self, idx: torch.Tensor) -> Batch:
        tensors = ("actions", "logprobs", "values", "advantages", "returns", "mask", "ref_logprobs")
        return replace(self, obs=take_obs(self.obs, idx), **{k: _rows(getattr(self, k), idx) for k in tensors})


def _rows(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.index_select(0, idx)  # a quarter of x[idx]'s cost


def take_obs(obs: Obs, idx: torch.Tensor) -> Obs:
    """Rows ``idx`` of a flat observation batch (goal and acting member included)."""
    return Obs(_rows(obs.market, idx), _rows(obs.position, idx), _rows(obs.goal, idx), _rows(obs.member, idx))


@dataclass
class Iteration:
    """What the pieces of one iteration share: the rollout, where training stands, and the logs."""

    rollout: object  # src.rl.rollout.Rollout
    env: object  # the training env (final observations of the rollout's steps)
    iteration: int  # 0-based index of this iteration
    progress: float  # gradient steps taken / the budget, in [0, 1]
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    raw_next_values: torch.Tensor | None = None  # (T, N) the critic's V(s_t+1) in return units, set by the rule
    _next_obs: Obs | None = None

    def next_obs(self) -> Obs:
        """The flat (T x N) observations each step led to (before any restart), computed once."""
        if self._next_obs is None:
            b = self.rollout
            self._next_obs = self.env.observe(b.final_t.reshape(-1), b.final_position.reshape(-1))
        return self._next_obs


class AddOn:
    """An optional piece of the update; see the module docstring. Every hook defaults to a no-op."""

    changes_rewards = False  # True: the critic learns more than the market's reward (val/value_loss is not comparable)
    needs_critic = False  # True: refused with a rule that trains no critic (GRPO)
    goal_dim = 0  # > 0: the policy reads that many goal features (HER)

    def trained_modules(self) -> list[nn.Module]:
        """Modules trained with the agent's optimizer, besides the policy."""
        return []

    def setup(self, module) -> None:
        """Once the env exists (``module``: the LightningModule; read what you need, keep nothing else)."""

    def tracker(self):
        """An object the rollout calls at every step (``attach(obs) -> obs``, ``step(reward, dones)``), or None."""
        return None

    def evaluation_tracker(self, module):
        """What the deterministic evaluation policy must carry (HER: a fixed goal), or None."""
        return None

    def rewards(self, it: Iteration, rewards: torch.Tensor) -> torch.Tensor:
        """(T, N) rewards the critic and policy learn from (already x ``reward_scale``)."""
        return rewards

    def observe(self, it: Iteration, rule, batch: Batch, rewards: torch.Tensor) -> None:
        """After the targets exist, before the update (e.g. store the rollout)."""

    def loss(
        self, model: nn.Module, mb: Batch, idx: torch.Tensor, it: Iteration, rule, terms: dict
    ) -> torch.Tensor | None:
        """A term added to the minibatch loss (log its parts into ``terms``); ``idx``: the minibatch's rows of the
        flat rollout (e.g. to index ``it.next_obs()``)."""
        return None

    def after_step(self) -> None:
        """After each optimizer step (e.g. refresh priorities)."""

    def episodes_broken(self) -> None:
        """The training episodes in progress were cut without an episode end (a skipped rollout, an env
        rebuilt): forget what was waiting for their end."""

    def extra_state(self) -> dict:
        """State outside module buffers that a resumed run needs (replay contents, trackers)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
