"""A population's randomness and update targets (``population=K``): each member's random stream, its seeds, and
PPO's targets computed per member (the batched model is :mod:`src.models.population`; the LightningModule that
drives them is :mod:`src.training.population`)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from src.rl.addons import Iteration
from src.rl.gae import compute_gae
from src.rl.ppo import PPO, PPOConfig, explained_variance


def member_seeds(seed: int, size: int) -> list[int]:
    """The seeds of a population's members: member k is the run with seed ``seed + k``."""
    return [int(seed) + k for k in range(size)]


class MemberStreams:
    """Per-member copies of the process-global torch generator of ``device``.

    Inside ``with streams.member(k):`` the global generator is member k's (what its own run would draw next);
    on exit member k's advanced state is kept and the process's state restored.
    """

    def __init__(self, states: list[torch.Tensor], device: torch.device | str = "cpu") -> None:
        self.states, self.device = [s.clone() for s in states], torch.device(device)

    @classmethod
    def seeded(cls, seeds: list[int], device: torch.device | str) -> MemberStreams:
        """Streams as ``torch.manual_seed(seed)`` leaves the generator of ``device``."""
        out = cls([], device)
        with torch.random.fork_rng(devices=[out.device] if out.device.type == "cuda" else []):
            for s in seeds:
                torch.manual_seed(s)
                out.states.append(out._get())
        return out

    def _get(self) -> torch.Tensor:
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def _set(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    @contextmanager
    def member(self, k: int):
        keep = self._get()
        self._set(self.states[k])
        try:
            yield
        finally:
            self.states[k] = self._get()
            self._set(keep)

    def randperm(self, k: int, n: int) -> torch.Tensor:
        with self.member(k):
            return torch.randperm(n, device=self.device)

    def state_dict(self) -> dict:
        return {"states": [s.cpu() for s in self.states], "device": str(self.device)}

    def load_state_dict(self, saved: dict) -> None:
        self.states = [s.clone() for s in saved["states"]]


@dataclass
class PopulationBatch:
    """One iteration's per-member data: every tensor is (K, T x n, ...), member k's rows in its own run's order."""

    market: torch.Tensor
    position: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def size(self) -> int:
        return self.actions.shape[1]

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Member k's rows ``idx[k]`` of every tensor, as the positional arguments of the member loss."""

        def rows(x):
            return torch.stack([x[k].index_select(0, i) for k, i in enumerate(idx)])

        return tuple(rows(x) for x in (self.market, self.position, self.actions, self.logprobs, self.values,
                                       self.advantages, self.returns))  # fmt: skip


class PopulationPPO(nn.Module):
    """PPO's targets per member: one :class:`~src.rl.ppo.PPO` (its value statistics) per member, GAE on all."""

    has_critic, grouped_episodes, fusable = True, False, False

    def __init__(self, cfg: PPOConfig, size: int) -> None:
        super().__init__()
        self.cfg, self.size = cfg, size
        self.rules = nn.ModuleList(PPO(cfg) for _ in range(size))

    def begin(self, model: nn.Module, it: Iteration) -> None:
        """Before the rollout (nothing for PPO)."""

    def _per_member(self, x: torch.Tensor, fn) -> torch.Tensor:
        t = x.shape[0]
        parts = x.reshape(t, self.size, -1)
        return torch.stack([fn(r, parts[:, k]) for k, r in enumerate(self.rules)], 1).reshape(x.shape)

    def targets(self, it: Iteration, rewards: torch.Tensor) -> PopulationBatch:
        b, p = it.rollout, self.cfg
        values = self._per_member(b.values, lambda r, v: r.raw_values(v))
        it.raw_next_values = self._per_member(b.next_values, lambda r, v: r.raw_values(v))
        adv, ret = compute_gae(rewards, values, it.raw_next_values, b.terminated, b.dones, p.gamma, p.gae_lambda)
        t, k = ret.shape[0], self.size
        for j, r in enumerate(self.rules):  # each member's statistics from its own targets
            if r.value_norm is not None:
                r.value_norm.update(ret.reshape(t, k, -1)[:, j])
        evs = [explained_variance(values.reshape(t, k, -1)[:, j].flatten(), ret.reshape(t, k, -1)[:, j].flatten())
               for j in range(k)]  # fmt: skip
        it.logs["losses/explained_variance"] = torch.tensor(evs).nanmean()
        returns = self._per_member(ret, lambda r, x: r.critic_units(x))

        def members(x: torch.Tensor) -> torch.Tensor:  # (T, K*n, ...) -> (K, T*n, ...)
            y = x.reshape(t, k, -1, *x.shape[2:]).transpose(0, 1)
            return y.reshape(k, -1, *x.shape[2:])

        return PopulationBatch(members(b.market), members(b.position), members(b.actions), members(b.logprobs),
                               members(b.values), members(adv), members(returns))  # fmt: skip
